//! Static files under `--docroot`, resolved so nothing outside it is served.
//!
//! Owns: mapping a request path to a file and the file's response. Must not
//! touch: routing (the bus sends here what is not its own), sockets.
//!
//! The request path is split into segments, each percent-decoded (`+` stays
//! a plus sign: it means a space only in query strings), and refused when a
//! segment is `..` or holds a NUL, a slash or a backslash after decoding; the
//! joined path is then canonicalised (which resolves symlinks) and must
//! still lie under the canonical docroot, compared by path components, not by
//! string prefix. A directory serves its `index.html`. Files are read whole,
//! up to [`MAX_FILE`].

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::codec::{Method, Request};
use super::response::{Response, TEXT};
use super::uri::path_segment;

/// Largest file served.
pub const MAX_FILE: u64 = 16 * 1024 * 1024;

/// The response for a non-bus path.
pub fn serve(req: &Request, docroot: Option<&Path>) -> Response {
    let Some(root) = docroot else {
        return not_found();
    };
    if !matches!(req.method, Method::Get | Method::Head) {
        return Response::new(405).header("Allow", "GET, HEAD").body(
            TEXT,
            &b"405 Method Not Allowed: static files take GET and HEAD\n"[..],
        );
    }
    let Some(file) = resolve(root, req.path()) else {
        return not_found();
    };
    match std::fs::read(&file) {
        Ok(body) => Response::new(200).body(content_type(&file), Bytes::from(body)),
        Err(e) => {
            log::debug!("docroot: {}: {e}", file.display());
            not_found()
        }
    }
}

fn not_found() -> Response {
    Response::new(404).body("text/html", &b"<h1>Not Found</h1>"[..])
}

/// The file a request path names under `root` (canonical), or `None` when it
/// does not exist, is not a regular file, or would lie outside `root`.
pub fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let mut joined = root.to_path_buf();
    for raw in path.split('/') {
        let part = path_segment(raw);
        let part: &[u8] = &part;
        if part.is_empty() || part == b"." {
            continue;
        }
        if part == b".." || part.contains(&0) || part.contains(&b'/') || part.contains(&b'\\') {
            return None;
        }
        joined.push(std::str::from_utf8(part).ok()?);
    }
    let mut real = joined.canonicalize().ok()?;
    if !real.starts_with(root) {
        return None;
    }
    let mut meta = std::fs::metadata(&real).ok()?;
    if meta.is_dir() {
        real = real.join("index.html").canonicalize().ok()?;
        if !real.starts_with(root) {
            return None;
        }
        meta = std::fs::metadata(&real).ok()?;
    }
    (meta.is_file() && meta.len() <= MAX_FILE).then_some(real)
}

/// The Content-Type for a file, by its extension.
pub fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("xml") => "application/xml",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("wasm") => "application/wasm",
        Some("pdf") => "application/pdf",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (PathBuf, PathBuf) {
        let base = std::env::temp_dir().join(format!("sb-files-{}", std::process::id()));
        let root = base.join("www");
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(base.join("www2")).unwrap();
        std::fs::write(root.join("index.html"), "<html>index</html>\n").unwrap();
        std::fs::write(root.join("sub/a.txt"), "a").unwrap();
        std::fs::write(base.join("www2/secret.txt"), "secret").unwrap();
        std::fs::write(base.join("outside.txt"), "x").unwrap();
        std::os::unix::fs::symlink(base.join("outside.txt"), root.join("link.txt")).unwrap();
        (base, root.canonicalize().unwrap())
    }

    #[test]
    fn resolution_stays_inside() {
        let (base, root) = tree();
        assert_eq!(resolve(&root, "/"), Some(root.join("index.html")));
        assert_eq!(resolve(&root, "/sub/a.txt"), Some(root.join("sub/a.txt")));
        assert_eq!(
            resolve(&root, "/sub"),
            None,
            "a directory without index.html"
        );
        for evil in [
            "/../outside.txt",
            "/%2e%2e/outside.txt",
            "/%2E%2E/outside.txt",
            "/..%2foutside.txt",
            "/sub/../../outside.txt",
            "/../www2/secret.txt",
            "/link.txt",
            "/index.html%00.txt",
            "/nothere",
        ] {
            assert_eq!(resolve(&root, evil), None, "{evil}");
        }
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn plus_in_a_path_is_a_plus() {
        let base = std::env::temp_dir().join(format!("sb-files-plus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("a+b.txt"), "plus").unwrap();
        std::fs::write(base.join("a b.txt"), "space").unwrap();
        let root = base.canonicalize().unwrap();
        assert_eq!(resolve(&root, "/a+b.txt"), Some(root.join("a+b.txt")));
        assert_eq!(resolve(&root, "/a%2Bb.txt"), Some(root.join("a+b.txt")));
        assert_eq!(resolve(&root, "/a%20b.txt"), Some(root.join("a b.txt")));
        std::fs::remove_file(base.join("a+b.txt")).unwrap();
        assert_eq!(
            resolve(&root, "/a+b.txt"),
            None,
            "never the file with a space"
        );
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn types() {
        assert_eq!(
            content_type(Path::new("a.HTML")),
            "text/html; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("noext")), "application/octet-stream");
    }
}

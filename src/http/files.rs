//! Static files under `--docroot`, opened so nothing outside it is served
//! and read so no file access can hold up the loop.
//!
//! Owns: mapping a request path to a file and the file's response. Must not
//! touch: routing (the bus sends here what is not its own), sockets.
//!
//! The request path is split into segments, each percent-decoded (`+` stays
//! a plus sign: it means a space only in query strings), and refused when a
//! segment is `..` or holds a NUL, a slash or a backslash after decoding.
//! The file is then opened relative to the docroot's directory, following
//! no symbolic link at any level (`openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS` where the kernel has it, else one `openat` with
//! `O_NOFOLLOW` per segment), never blocking in `open` (`O_NONBLOCK`: a FIFO
//! opens at once), and served only when `fstat` of the opened file says it
//! is a regular file of at most [`MAX_FILE`] bytes: what is checked is what
//! is read, so renaming a link in between changes nothing. A directory
//! serves its `index.html`, opened from the directory the same way.
//!
//! [`load`] blocks (it reads the disk): the bus runs it on a helper thread
//! ([`crate::door::Cx::run_blocking`]) and answers when it is done.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::codec::{Method, Request};
use super::response::{Response, TEXT};
use super::uri::path_segment;

/// Largest file served.
pub const MAX_FILE: u64 = 16 * 1024 * 1024;

/// What reading a request's file gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    File {
        body: Bytes,
        content_type: &'static str,
    },
    NotFound,
}

/// The answer for a non-bus path that needs no file access: `Err` holds
/// the response (no docroot, a method other than GET and HEAD, a path that
/// is refused before any file is opened); `Ok` the segments to open.
pub fn check(req: &Request, docroot: Option<&Path>) -> Result<Vec<String>, Response> {
    if docroot.is_none() {
        return Err(not_found());
    }
    if !matches!(req.method, Method::Get | Method::Head) {
        return Err(Response::new(405).header("Allow", "GET, HEAD").body(
            TEXT,
            &b"405 Method Not Allowed: static files take GET and HEAD\n"[..],
        ));
    }
    segments(req.path()).ok_or_else(not_found)
}

/// The response to a finished [`load`].
pub fn response(loaded: &Loaded) -> Response {
    match loaded {
        Loaded::File { body, content_type } => Response::new(200).body(*content_type, body.clone()),
        Loaded::NotFound => not_found(),
    }
}

/// The response when no helper thread can take the read now.
pub fn busy() -> Response {
    Response::text(503, "too many file reads under way; try again")
}

fn not_found() -> Response {
    Response::new(404).body("text/html", &b"<h1>Not Found</h1>"[..])
}

/// The decoded segments of a request path, or `None` when one of them may
/// not name a file under the docroot.
pub fn segments(path: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for raw in path.split('/') {
        let part = path_segment(raw);
        let part: &[u8] = &part;
        if part.is_empty() || part == b"." {
            continue;
        }
        if part == b".." || part.contains(&0) || part.contains(&b'/') || part.contains(&b'\\') {
            return None;
        }
        out.push(std::str::from_utf8(part).ok()?.to_string());
    }
    Some(out)
}

/// Opens and reads the file `segments` names under `root` (blocking; see
/// the module's notes). Anything that is not a regular file reached without
/// a symbolic link is [`Loaded::NotFound`].
pub fn load(root: &Path, segments: &[String]) -> Loaded {
    match open_file(root, segments).and_then(read_file) {
        Ok((body, name)) => Loaded::File {
            body,
            content_type: content_type(Path::new(&name)),
        },
        Err(e) => {
            log::debug!("docroot: /{}: {e}", segments.join("/"));
            Loaded::NotFound
        }
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);
const FILE_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

/// The opened file and the name its type is judged by.
fn open_file(root: &Path, segments: &[String]) -> io::Result<(File, String)> {
    let dir = rustix::fs::open(root, DIR_FLAGS, Mode::empty())?;
    let rel: PathBuf = segments.iter().collect();
    let rel = if segments.is_empty() {
        PathBuf::from(".")
    } else {
        rel
    };
    let file = File::from(open_beneath(&dir, &rel)?);
    let meta = file.metadata()?;
    if meta.is_dir() {
        let index = File::from(open_beneath(&file_fd(&file)?, Path::new("index.html"))?);
        return Ok((index, "index.html".to_string()));
    }
    let name = segments.last().cloned().unwrap_or_default();
    Ok((file, name))
}

fn file_fd(file: &File) -> io::Result<OwnedFd> {
    Ok(file.try_clone()?.into())
}

/// Opens `rel` (plain segments) under the directory `dir` without following
/// any symbolic link and without blocking.
fn open_beneath(dir: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(dir, rel, FILE_FLAGS, Mode::empty(), resolve) {
        Ok(fd) => return Ok(fd),
        // Kernels before 5.6 (ENOSYS), or a sandbox that forbids openat2.
        Err(e) if e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::PERM => {}
        Err(e) => return Err(e.into()),
    }
    let mut at: Option<OwnedFd> = None;
    let mut parts = rel.components().peekable();
    while let Some(part) = parts.next() {
        let base = at.as_ref().unwrap_or(dir);
        let flags = if parts.peek().is_some() {
            DIR_FLAGS | OFlags::NOFOLLOW
        } else {
            FILE_FLAGS | OFlags::NOFOLLOW
        };
        at = Some(rustix::fs::openat(
            base,
            part.as_os_str(),
            flags,
            Mode::empty(),
        )?);
    }
    at.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "empty path"))
}

/// Reads a regular file of at most [`MAX_FILE`] bytes.
fn read_file((file, name): (File, String)) -> io::Result<(Bytes, String)> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_FILE {
        return Err(io::Error::other(format!("larger than {MAX_FILE} bytes")));
    }
    let mut body = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // A file that grows while it is read stops at the limit.
    file.take(MAX_FILE).read_to_end(&mut body)?;
    Ok((Bytes::from(body), name))
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

    /// A tree of files of its own for each test (`tag`): the tests run in
    /// parallel threads of one process, and each removes its tree first.
    fn tree(tag: &str) -> (PathBuf, PathBuf) {
        let base = std::env::temp_dir().join(format!("sb-files-{tag}-{}", std::process::id()));
        let root = base.join("www");
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(base.join("www2")).unwrap();
        std::fs::write(root.join("index.html"), "<html>index</html>\n").unwrap();
        std::fs::write(root.join("sub/a.txt"), "a").unwrap();
        std::fs::write(base.join("www2/secret.txt"), "secret").unwrap();
        std::fs::write(base.join("outside.txt"), "x").unwrap();
        std::os::unix::fs::symlink(base.join("outside.txt"), root.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(root.join("sub"), root.join("linkdir")).unwrap();
        (base, root.canonicalize().unwrap())
    }

    fn get(root: &Path, path: &str) -> Option<String> {
        match load(root, &segments(path)?) {
            Loaded::File { body, .. } => Some(String::from_utf8_lossy(&body).into_owned()),
            Loaded::NotFound => None,
        }
    }

    #[test]
    fn resolution_stays_inside() {
        let (base, root) = tree("inside");
        assert_eq!(get(&root, "/").as_deref(), Some("<html>index</html>\n"));
        assert_eq!(get(&root, "/sub/a.txt").as_deref(), Some("a"));
        assert_eq!(get(&root, "/sub"), None, "a directory without index.html");
        for evil in [
            "/../outside.txt",
            "/%2e%2e/outside.txt",
            "/%2E%2E/outside.txt",
            "/..%2foutside.txt",
            "/sub/../../outside.txt",
            "/../www2/secret.txt",
            "/link.txt",
            "/linkdir/a.txt",
            "/index.html%00.txt",
            "/nothere",
        ] {
            assert_eq!(get(&root, evil), None, "{evil}");
        }
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn a_fifo_is_not_found_and_does_not_block() {
        let (base, root) = tree("fifo");
        let fifo = root.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        assert_eq!(get(&root, "/fifo"), None);
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
        assert_eq!(get(&root, "/a+b.txt").as_deref(), Some("plus"));
        assert_eq!(get(&root, "/a%2Bb.txt").as_deref(), Some("plus"));
        assert_eq!(get(&root, "/a%20b.txt").as_deref(), Some("space"));
        std::fs::remove_file(base.join("a+b.txt")).unwrap();
        assert_eq!(get(&root, "/a+b.txt"), None, "never the file with a space");
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

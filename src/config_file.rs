//! The configuration file (`--config FILE`, TOML) and `--print-config`.
//!
//! Owns: turning the file into command-line arguments, and printing the
//! effective configuration back as a file. Must not touch: what a flag
//! means or how it is validated (`config.rs`), sockets, the broker.
//!
//! Every key is a flag's long name (`bus-listen = "127.0.0.1:8888"`), at
//! the top level. The file's settings become arguments placed before the
//! command line's; a flag given on the command line drops the file's
//! setting of it (a repeatable flag such as `--proxy-route` too, so that
//! the command line replaces the file's list rather than adding to it).
//! Because the file only ever becomes flags, every present and future flag
//! has its key, and a value is checked by the same parser as on the
//! command line.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory};
use toml::Spanned;

use crate::config::Args;

/// Flags that have no key: they are about the file itself, or stop the
/// program.
const NOT_IN_FILE: &[&str] = &["config", "print-config", "help", "version"];

/// Why the command line and the file could not be put together.
#[derive(Debug)]
pub enum ArgsError {
    /// The command line itself (or `--help`, `--version`): clap prints it.
    Clap(clap::Error),
    /// The file: a message that names it, the line and the key.
    File(String),
}

/// `argv` (program name first) with the settings of its `--config` file,
/// if it names one, placed before its own flags.
pub fn with_file(argv: Vec<OsString>) -> Result<Vec<OsString>, ArgsError> {
    let cmd = Args::command();
    // Only `--config` and the flags given are wanted here: what the
    // command line needs from the file (a `--line-tls-listen` whose
    // certificate the file names) is checked once both are merged.
    let matches = match cmd.clone().try_get_matches_from(&argv) {
        Ok(matches) => matches,
        Err(e) if e.kind() == clap::error::ErrorKind::MissingRequiredArgument => cmd
            .clone()
            .ignore_errors(true)
            .try_get_matches_from(&argv)
            .map_err(ArgsError::Clap)?,
        Err(e) => return Err(ArgsError::Clap(e)),
    };
    let Some(path) = matches.get_one::<std::path::PathBuf>("config") else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| ArgsError::File(format!("--config {}: {e}", path.display())))?;
    let file_args = file_args(&cmd, &matches, path, &text).map_err(ArgsError::File)?;
    let mut all = Vec::with_capacity(argv.len() + file_args.len());
    let mut rest = argv.into_iter();
    all.extend(rest.next());
    all.extend(file_args.into_iter().map(OsString::from));
    all.extend(rest);
    Ok(all)
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.get(..at)
        .map_or(0, |before| before.bytes().filter(|&b| b == b'\n').count())
        + 1
}

/// The arguments the file `text` stands for, minus the flags the command
/// line (`matches`) gives itself.
fn file_args(
    cmd: &Command,
    matches: &ArgMatches,
    path: &Path,
    text: &str,
) -> Result<Vec<String>, String> {
    let file = path.display();
    let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| format!("--config {file}: not valid TOML: {e}"))?;
    let mut args = Vec::new();
    for (key, value) in &table {
        let line = line_of(text, key.span().start);
        let name = key.get_ref().as_str();
        let at = |what: String| format!("--config {file}, line {line}: {what}");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(name) && !NOT_IN_FILE.contains(&name))
            .ok_or_else(|| {
                at(format!(
                    "unknown key `{name}` (the keys are the long names of the flags, \
                     as `switchboard --help` lists them, e.g. `bus-listen`)"
                ))
            })?;
        if matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            continue;
        }
        for v in values(cmd, arg, name, value.get_ref()).map_err(at)? {
            args.push(v);
        }
    }
    Ok(args)
}

/// The arguments one key stands for, its value checked by the flag's own
/// parser.
fn values(
    cmd: &Command,
    arg: &Arg,
    name: &str,
    value: &toml::Value,
) -> Result<Vec<String>, String> {
    match arg.get_action() {
        ArgAction::SetTrue => match value {
            toml::Value::Boolean(true) => Ok(vec![format!("--{name}")]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            other => Err(format!(
                "`{name}` is true or false, not {}",
                describe(other)
            )),
        },
        ArgAction::Append => match value {
            toml::Value::Array(items) => items
                .iter()
                .map(|item| one_value(cmd, name, item))
                .collect(),
            scalar => Ok(vec![one_value(cmd, name, scalar)?]),
        },
        ArgAction::Set => match value {
            toml::Value::Array(_) => Err(format!("`{name}` takes one value, not a list")),
            scalar => Ok(vec![one_value(cmd, name, scalar)?]),
        },
        _ => Err(format!("`{name}` cannot be set in a configuration file")),
    }
}

/// `--NAME=VALUE` for one scalar, once the flag's parser accepts it.
fn one_value(cmd: &Command, name: &str, value: &toml::Value) -> Result<String, String> {
    let text = match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        other => {
            return Err(format!(
                "`{name}` takes a string or a number, not {}",
                describe(other)
            ))
        }
    };
    let flag = format!("--{name}={text}");
    // The flag alone on a command line: its value parser speaks. Other
    // complaints (a flag it requires) are for the whole command line.
    if let Err(e) = cmd
        .clone()
        .try_get_matches_from(["switchboard", flag.as_str()])
    {
        if matches!(
            e.kind(),
            ErrorKind::InvalidValue | ErrorKind::ValueValidation
        ) {
            let said = e.to_string();
            let first = said.lines().next().unwrap_or("");
            return Err(format!(
                "`{name}`: {}",
                first.strip_prefix("error: ").unwrap_or(first)
            ));
        }
    }
    Ok(flag)
}

/// A TOML value's kind, for error messages.
fn describe(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table (keys are flag names, at the top level)",
    }
}

/// The effective configuration of `argv` (with its file already in front,
/// see [`with_file`]) as a file `--config` accepts: every flag with a key,
/// its value or its default; a flag with neither is a comment.
pub fn print(argv: &[OsString]) -> Result<String, clap::Error> {
    let cmd = Args::command();
    let matches = cmd.clone().try_get_matches_from(argv)?;
    let mut out = format!(
        "# switchboard {}: the effective configuration (switchboard --config FILE reads it back)\n",
        env!("CARGO_PKG_VERSION")
    );
    for arg in cmd.get_arguments() {
        let Some(name) = arg.get_long() else {
            continue;
        };
        if NOT_IN_FILE.contains(&name) {
            continue;
        }
        let id = arg.get_id().as_str();
        let line = match arg.get_action() {
            ArgAction::SetTrue => format!("{name} = {}", matches.get_flag(id)),
            ArgAction::Append => {
                let items: Vec<String> = matches
                    .get_raw(id)
                    .into_iter()
                    .flatten()
                    .map(|v| scalar(&v.to_string_lossy()))
                    .collect();
                format!("{name} = [{}]", items.join(", "))
            }
            _ => match matches.get_raw(id).and_then(|mut v| v.next()) {
                Some(v) => format!("{name} = {}", scalar(&v.to_string_lossy())),
                None => format!("# {name} is not set"),
            },
        };
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// A value as TOML: a number when it is one (written the same way back),
/// otherwise a string.
fn scalar(v: &str) -> String {
    match v.parse::<i64>() {
        Ok(n) if n.to_string() == v => v.to_string(),
        _ => toml::Value::String(v.to_string()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("switchboard")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn from_text(text: &str, cmdline: &[&str]) -> Result<Vec<String>, String> {
        let cmd = Args::command();
        let matches = cmd.clone().try_get_matches_from(argv(cmdline)).unwrap();
        file_args(&cmd, &matches, Path::new("f.toml"), text)
    }

    #[test]
    fn keys_become_flags_and_the_command_line_wins() {
        let text = "bus-listen = \"off\"\nmax-line = 100\nallow-shutdown = true\n\
                    proxy-route = [\"/a=q\", \"/b=r\"]\nslow-subscriber = \"disconnect\"\n";
        let args = from_text(text, &[]).unwrap();
        assert_eq!(
            args,
            [
                "--allow-shutdown",
                "--bus-listen=off",
                "--max-line=100",
                "--proxy-route=/a=q",
                "--proxy-route=/b=r",
                "--slow-subscriber=disconnect"
            ]
        );
        let args = from_text(text, &["--max-line", "200", "--proxy-route", "/c=s"]).unwrap();
        assert!(!args.iter().any(|a| a.starts_with("--max-line")));
        assert!(!args.iter().any(|a| a.starts_with("--proxy-route")));
    }

    #[test]
    fn errors_name_the_key_and_its_line() {
        for (text, says) in [
            (
                "max-line = 100\n\nbogus = 1\n",
                "line 3: unknown key `bogus`",
            ),
            (
                "max-line = \"many\"\n",
                "line 1: `max-line`: invalid value 'many'",
            ),
            (
                "max-line = 1.5\n",
                "line 1: `max-line`: invalid value '1.5'",
            ),
            (
                "allow-shutdown = \"yes\"\n",
                "line 1: `allow-shutdown` is true or false, not a string",
            ),
            (
                "bus-listen = [\"off\"]\n",
                "`bus-listen` takes one value, not a list",
            ),
            (
                "bus-listen = true\n",
                "`bus-listen` takes a string or a number, not a boolean",
            ),
            (
                "slow-subscriber = \"never\"\n",
                "`slow-subscriber`: invalid value 'never'",
            ),
            ("[bus]\nlisten = \"off\"\n", "line 1: unknown key `bus`"),
            ("config = \"other.toml\"\n", "unknown key `config`"),
            ("max-line = \n", "not valid TOML"),
        ] {
            let err = from_text(text, &[]).unwrap_err();
            assert!(err.contains(says), "{text:?}: {err}");
            assert!(err.starts_with("--config f.toml"), "{err}");
        }
    }

    #[test]
    fn printed_values_read_back_the_same() {
        assert_eq!(scalar("100"), "100");
        assert_eq!(scalar("007"), "\"007\"");
        for odd in ["a\"b", "it's", "x\\y", "tab\there", "ünï"] {
            let back: toml::Table = toml::from_str(&format!("k = {}", scalar(odd))).unwrap();
            assert_eq!(back["k"].as_str(), Some(odd));
        }
        let printed = print(&argv(&["--max-line", "77", "--proxy-route", "/x=y"])).unwrap();
        assert!(printed.contains("\nmax-line = 77\n"), "{printed}");
        assert!(
            printed.contains("\nproxy-route = [\"/x=y\"]\n"),
            "{printed}"
        );
        assert!(printed.contains("\nallow-shutdown = false\n"), "{printed}");
        assert!(printed.contains("\n# docroot is not set\n"), "{printed}");
        let back = from_text(&printed, &[]).unwrap();
        assert!(back.contains(&"--max-line=77".to_string()), "{back:?}");
    }
}

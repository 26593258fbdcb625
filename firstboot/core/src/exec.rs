//! The one wrapper through which every external tool is run.
//!
//! It logs the command in copy-pasteable form, closes stdin, captures output,
//! and turns failure into an error that names the tool, the Debian package to
//! install when the tool is missing, and the tail of its stderr.

use anyhow::{bail, Context, Result};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// How many lines of stderr an error carries.
const STDERR_TAIL_LINES: usize = 15;

/// An external command about to run.
#[derive(Debug)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    dir: Option<std::path::PathBuf>,
    package: Option<&'static str>,
    /// Variables of `envs` whose values are never shown.
    secret_keys: Vec<OsString>,
}

impl Cmd {
    /// A command running `program`.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd { program: program.as_ref().to_owned(), args: Vec::new(), envs: Vec::new(), dir: None, package: None, secret_keys: Vec::new() }
    }

    /// Names the Debian package that provides the program, for the "not found" hint.
    pub fn package(mut self, package: &'static str) -> Self {
        self.package = Some(package);
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// An environment variable whose value is a secret: passed to the
    /// program, shown as `KEY=<secret>` in logs and errors.
    pub fn secret_env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.secret_keys.push(key.as_ref().to_owned());
        self.env(key, value)
    }

    /// Runs the command in `dir` (for tools that read config from their cwd).
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(dir.as_ref().to_owned());
        self
    }

    fn program_name(&self) -> String {
        Path::new(&self.program).file_name().unwrap_or(&self.program).to_string_lossy().into_owned()
    }

    /// The command line as a shell would take it, for logs.
    pub fn display(&self) -> String {
        let mut parts: Vec<String> = self
            .envs
            .iter()
            .map(|(k, v)| {
                let v = if self.secret_keys.contains(k) { "<secret>".into() } else { shell_quote(&v.to_string_lossy()) };
                format!("{}={v}", k.to_string_lossy())
            })
            .collect();
        parts.push(shell_quote(&self.program.to_string_lossy()));
        parts.extend(self.args.iter().map(|a| shell_quote(&a.to_string_lossy())));
        parts.join(" ")
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).stdin(Stdio::null());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// Runs the command to completion and returns its stdout; fails on a
    /// non-zero exit with the tail of stderr.
    pub fn run(&self) -> Result<String> {
        let out = self.output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs the command and parses its stdout as JSON.
    pub fn run_json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        let stdout = self.run()?;
        serde_json::from_str(&stdout).with_context(|| format!("parsing the JSON output of {}", self.program_name()))
    }

    /// Runs the command and returns its full output on success.
    pub fn output(&self) -> Result<Output> {
        tracing::debug!(target: "ciab::exec", "$ {}", self.display());
        let out = match self.command().stdout(Stdio::piped()).stderr(Stdio::piped()).output() {
            Ok(out) => out,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(self.not_found()),
            Err(err) => return Err(err).with_context(|| format!("starting {}", self.program_name())),
        };
        if !out.status.success() {
            bail!(self.failure(&out));
        }
        Ok(out)
    }

    fn not_found(&self) -> String {
        match self.package {
            Some(pkg) => format!(
                "{} not found: install the Debian package `{pkg}`",
                self.program_name()
            ),
            None => format!("{} not found in PATH", self.program_name()),
        }
    }

    fn failure(&self, out: &Output) -> String {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n  ");
        let status = match out.status.code() {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".to_owned(),
        };
        format!("{} failed ({status})\n  command: {}\n  {tail}", self.program_name(), self.display())
    }
}

/// Quotes `s` for a POSIX shell when it needs quoting.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_the_package() {
        let err = Cmd::new("ciab-no-such-tool").package("ciab-pkg").run().unwrap_err().to_string();
        assert_eq!(
            err,
            "ciab-no-such-tool not found: install the Debian package `ciab-pkg`"
        );
    }

    #[test]
    fn failure_carries_exit_status_and_stderr_tail() {
        let err = Cmd::new("sh").args(["-c", "echo first >&2; echo boom >&2; exit 3"]).run().unwrap_err().to_string();
        assert!(err.starts_with("sh failed (exit status 3)"), "{err}");
        assert!(err.contains("boom"), "{err}");
        assert!(err.contains("command: sh -c 'echo first >&2; echo boom >&2; exit 3'"), "{err}");
    }

    #[test]
    fn secret_env_reaches_the_program_but_never_the_error() {
        let cmd = Cmd::new("sh").args(["-c", "echo \"${#PW} chars\" >&2; exit 4"]).secret_env("PW", "hunter2");
        let err = cmd.run().unwrap_err().to_string();
        assert!(err.contains("PW=<secret>"), "{err}");
        assert!(err.contains("7 chars"), "the program got the value: {err}");
        assert!(!err.contains("hunter2"), "{err}");
        let ok = Cmd::new("sh").args(["-c", "printf %s \"$PW\""]).secret_env("PW", "hunter2").run().unwrap();
        assert_eq!(ok, "hunter2");
    }

    #[test]
    fn stdin_is_closed() {
        // `cat` would block forever on an inherited terminal.
        assert_eq!(Cmd::new("cat").run().unwrap(), "");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a/b-c"), "a/b-c");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}

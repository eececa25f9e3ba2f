//! The man page and shell completions, generated from the clap definitions so they never drift from
//! `--help`. install.sh writes them next to the binary's prefix.

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::Error;

pub fn completions(shell: clap_complete::Shell) -> Result<(), Error> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "iam-authorized-keys", &mut out);
    crate::output::emit(&String::from_utf8_lossy(&out))
}

pub fn man() -> Result<(), Error> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .section("8")
        .render(&mut out)
        .map_err(Error::Stdout)?;
    crate::output::emit(&String::from_utf8_lossy(&out))
}

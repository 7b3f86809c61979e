//! `keel`: send, consume, manage topics and read broker stats from the command line.
//! The binary is `src/main.rs`; the integration tests run this same entry point.

mod cluster;
mod commands;
mod consume;
mod group;
mod message;
mod offline;
mod output;
mod prelude;
mod security;
mod send;
mod shared;
mod signals;
mod topic;
mod tx;
mod when;

use cluster::*;
use commands::*;
use consume::*;
use group::*;
use message::*;
use offline::*;
pub use output::format_time;
use output::*;
use shared::*;
use topic::*;
use tx::*;

use clap::Parser;
use keel_client::ClientError;
use std::process::ExitCode;

/// The `keel` command: parses the arguments, runs, and returns the exit status.
pub fn main_entry() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`keel consume ... | head`) instead of failing on a broken pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // The CLI reports every failure itself, one line on stderr: the library's own
    // warnings (ALARM lines, reconnects) stay out unless RUST_LOG asks for them.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("error,keel_client=off"),
    )
    .init();
    let cli = Cli::parse();
    let _ = JSON.set(cli.json);
    let (target, command) = match target(cli) {
        Ok(parts) => parts,
        Err(error) => {
            eprintln!("keel: {error}");
            return ExitCode::from(2);
        }
    };
    match run(&target, command) {
        Ok(code) => code,
        // Not known to have been done or not: 3, as `keel send` reports an unknown send.
        Err(error @ ClientError::OutcomeUnknown(_)) => {
            eprintln!("keel: {error}");
            ExitCode::from(3)
        }
        Err(error) => {
            eprintln!("keel: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The broker the command talks to and how (the profile's settings under the flags'),
/// and the command.
fn target(mut cli: Cli) -> Result<(security::Target, Command), String> {
    if let Some(name) = cli.profile.clone() {
        let profile = security::Profile::load(&name).map_err(|error| error.to_string())?;
        profile.fill(&mut cli.broker, &mut cli.access);
    }
    let address = cli.broker.as_deref().map_or_else(
        || format!("127.0.0.1:{BROKER_PORT}"),
        |broker| with_default_port(broker, BROKER_PORT),
    );
    let options = cli.access.options().map_err(|error| error.to_string())?;
    Ok((security::Target { address, options }, cli.command))
}

/// Carries out `command`: each arm hands over to its command group's module.
fn run(target: &security::Target, command: Command) -> Result<ExitCode, ClientError> {
    match command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "keel", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::User { command } => security::user(target, command),
        Command::Token { command } => security::token(target, command),
        Command::Acl { command } => security::acl(target, command),
        Command::Send(args) => send::run(target, &args),
        Command::Consume(args) => run_consume(target, args),
        Command::Topic { command } => topic(target, command),
        Command::Stats => stats(target),
        Command::Subscribe(args) => run_subscribe(target, args),
        Command::Dlq { command } => dlq(target, command),
        Command::Message {
            command:
                MessageCommand::Show {
                    id,
                    key,
                    payload,
                    hex,
                },
        } => {
            let payload = payload.then_some(PayloadFormat { raw: false, hex });
            message_show(target, id.as_deref(), key.as_deref(), payload)
        }
        Command::Offsets { command } => offsets(target, command),
        Command::Group { command } => group(target, command),
        Command::Admin { command } => admin(target, command),
        Command::Tx { command } => tx(target, command),
        Command::Routes { namesrv, topic } => routes(target, &namesrv, &topic),
        Command::Cluster {
            controllers,
            elect: Some(broker_id),
            group,
            unclean,
        } => cluster_elect(
            &controllers,
            group.unwrap_or_default(),
            broker_id,
            unclean,
            json(),
            &target.controller_access(),
        ),
        Command::Cluster { controllers, .. } => {
            cluster(&controllers, json(), &target.controller_access())
        }
    }
}

fn topic(target: &security::Target, command: TopicCommand) -> Result<ExitCode, ClientError> {
    match command {
        TopicCommand::Create { topic, queues } => create_topic(target, &topic, queues),
        TopicCommand::List { all } => list_topics(target, all),
        TopicCommand::Update { topic, queues } => add_queues(target, &topic, queues),
        TopicCommand::Describe { topic } => describe_topic(target, &topic),
        TopicCommand::Delete { topic, force, yes } => delete_topic(target, &topic, force, yes),
    }
}

fn run_consume(target: &security::Target, args: ConsumeArgs) -> Result<ExitCode, ClientError> {
    let ConsumeArgs {
        topic,
        group,
        count,
        idle_ms,
        quiet,
        format,
        no_commit,
        from,
        queue,
        offset,
    } = args;
    consume(
        target,
        &ConsumeShape {
            topic: &topic,
            // Without a group: a look from the start under a name of the CLI's own,
            // committing nothing (so no group is shared by every `keel consume`).
            group: group.as_deref().unwrap_or("keel-cli-look"),
            count,
            idle_ms,
            quiet,
            format,
            commit: !no_commit && group.is_some(),
            from: from.as_deref(),
            queue,
            offset,
        },
    )
}

fn run_subscribe(target: &security::Target, args: SubscribeArgs) -> Result<ExitCode, ClientError> {
    subscribe(target, args)
}

#[cfg(test)]
mod tests {
    use super::{parse_time, with_default_port};

    #[test]
    fn addresses_without_a_port_get_the_default_one() {
        assert_eq!(with_default_port("127.0.0.1", 10911), "127.0.0.1:10911");
        assert_eq!(with_default_port("localhost:1", 10911), "localhost:1");
        assert_eq!(with_default_port("::1", 9876), "[::1]:9876");
        assert_eq!(with_default_port("[::1]", 9876), "[::1]:9876");
        assert_eq!(with_default_port("[::1]:5", 9876), "[::1]:5");
    }

    #[test]
    fn from_times_are_epoch_milliseconds_or_rfc3339_utc() {
        assert_eq!(parse_time("1796119200000"), Some(1_796_119_200_000));
        assert_eq!(parse_time("2026-12-01T10:00:00Z"), Some(1_796_119_200_000));
        assert_eq!(parse_time("1999-02-28T23:59:59.5Z"), Some(920_246_399_500));
        assert_eq!(parse_time("2026-13-01T10:00:00Z"), None);
        assert_eq!(parse_time("2026-12-01 10:00:00"), None);
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("2026-12-01T10:00:00.12\u{e9}Z"), None);
        assert_eq!(parse_time("99999-01-01T00:00:00Z"), None);
        assert_eq!(parse_time("2026-12-01T-1:00:00Z"), None);
        assert_eq!(parse_time("+5"), None);
        assert_eq!(parse_time("1960-01-01T00:00:00Z"), None);
    }

    #[test]
    fn times_print_as_rfc3339_and_parse_back() {
        use super::format_time;
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_796_119_200_000), "2026-12-01T10:00:00.000Z");
        assert_eq!(format_time(920_246_399_500), "1999-02-28T23:59:59.500Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        for ms in [
            0,
            1,
            86_399_999,
            951_868_799_999,
            4_102_444_800_123,
            1_796_119_200_007,
        ] {
            assert_eq!(parse_time(&format_time(ms)), Some(ms), "{ms}");
        }
    }
}

//! `converge-ledger`: run the ledger (`serve`) or talk to one.

/// mimalloc: the server's buffers are allocated on one thread and freed on
/// another (a request's task, the group-commit writer, a replay's reader),
/// where glibc's allocator spends much of its time in locks and
/// consolidation (BENCHMARKS.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod client_cmds;
mod output;
mod project;
mod serve;
mod target;
mod token;
mod verify;
mod worldline;

use clap::{Parser, Subcommand};

/// Converge Ledger: an append-only, hash-chained context ledger.
#[derive(Parser)]
#[command(name = "converge-ledger", version, about)]
struct Cli {
    #[command(flatten)]
    target: target::Target,
    /// Print one JSON object per line instead of human output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ledger server.
    Serve(Box<serve::ServeArgs>),
    /// Append one entry (payload from --payload, --file or stdin).
    Append(client_cmds::AppendArgs),
    /// Print entries of a context.
    Get(client_cmds::GetArgs),
    /// Follow a context live (catch-up first), resuming after disconnects.
    Watch(client_cmds::WatchArgs),
    /// Write a verified, portable snapshot of a context to a file.
    Snapshot(client_cmds::SnapshotArgs),
    /// Restore a snapshot file into a context.
    Load(client_cmds::LoadArgs),
    /// Print a context's head: sequence, hash, Merkle root, Lamport clock.
    Head(client_cmds::HeadArgs),
    /// List non-empty contexts with their head sequences.
    Contexts(client_cmds::ContextsArgs),
    /// Verify a context over the network, or every context of a stopped server's data directory.
    Verify(verify::VerifyArgs),
    /// Print and verify a Merkle inclusion or consistency proof.
    #[command(subcommand)]
    Proof(verify::ProofArgs),
    /// Print the server's public signing key (or the one in a key file).
    Key(client_cmds::KeyArgs),
    /// Make bearer tokens for the auth file.
    #[command(subcommand)]
    Token(token::TokenArgs),
    /// The WorldLine profile: commitments, outcomes, snapshots, replay.
    #[command(subcommand)]
    Worldline(worldline::WorldlineArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let out = output::Output { json: cli.json };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                serve::init_logging(args.log_format);
                serve::run(*args).await
            }
            Command::Append(a) => client_cmds::append(&cli.target, out, a).await,
            Command::Get(a) => client_cmds::get(&cli.target, out, a).await,
            Command::Watch(a) => client_cmds::watch(&cli.target, out, a).await,
            Command::Snapshot(a) => client_cmds::snapshot(&cli.target, out, a).await,
            Command::Load(a) => client_cmds::load(&cli.target, out, a).await,
            Command::Head(a) => client_cmds::head(&cli.target, out, a).await,
            Command::Contexts(a) => client_cmds::contexts(&cli.target, out, a).await,
            Command::Verify(a) => verify::run(&cli.target, out, a).await,
            Command::Proof(a) => verify::proof(&cli.target, out, a).await,
            Command::Key(a) => client_cmds::key(&cli.target, out, a).await,
            Command::Token(a) => token::run(out, a),
            Command::Worldline(a) => worldline::run(&cli.target, out, a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! The `stockline` command: `serve` (the default), `migrate`, `user create`.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use stockline::config::Config;
use stockline::{startup, telemetry};

/// glibc's malloc spent ~20% of the CPU under load (fragmentation across threads);
/// mimalloc gave +53% requests/s in `async` mode in the load harness (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "stockline",
    version,
    about = "Inventory core: one in-memory actor per stock line"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (the default when no subcommand is given).
    Serve(Box<Config>),
    /// Create the database if missing and apply the migrations, then exit.
    Migrate(Database),
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Args, Debug)]
struct Database {
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/stockline"
    )]
    database_url: String,
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Create a user (the first admin, typically).
    Create(UserCreate),
}

#[derive(Args, Debug)]
struct UserCreate {
    #[arg(long)]
    email: String,
    #[arg(long, env = "STOCKLINE_USER_PASSWORD", hide_env_values = true)]
    password: String,
    #[arg(long, default_value = "")]
    name: String,
    #[arg(long, value_enum, default_value = "customer")]
    role: Role,
    #[arg(long, env = "STOCKLINE_BCRYPT_COST", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(4..=31))]
    bcrypt_cost: u32,
    #[command(flatten)]
    database: Database,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Role {
    Customer,
    Operator,
    Admin,
}

fn main() -> ExitCode {
    dotenvy::dotenv().ok();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or_else(|| {
        // `stockline` alone is `stockline serve` with flags from the environment.
        let Cli { command } = Cli::parse_from(["stockline", "serve"]);
        command.expect("serve parses")
    });
    telemetry::init();
    match command {
        Command::Serve(config) => serve(*config),
        Command::Migrate(database) => run(async move {
            stockline::store::connect_and_migrate(&database.database_url)
                .await
                .map_err(|e| e.to_string())?;
            println!("the database is migrated");
            Ok(())
        }),
        Command::User(UserCommand::Create(user)) => run(create_user(user)),
    }
}

/// Runs a one-shot command on a fresh runtime; errors go to stderr with exit code 1.
fn run(command: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let outcome = tokio::runtime::Runtime::new()
        .map_err(|e| e.to_string())
        .and_then(|runtime| runtime.block_on(command));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stockline: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn create_user(user: UserCreate) -> Result<(), String> {
    let email = stockline::http::auth_email(&user.email).map_err(|e| e.to_string())?;
    stockline::http::auth_password_ok(&user.password).map_err(|e| e.to_string())?;
    let db = stockline::store::connect_and_migrate(&user.database.database_url)
        .await
        .map_err(|e| e.to_string())?;
    let hash = stockline::auth::password::hash(user.password, user.bcrypt_cost)
        .await
        .map_err(|e| e.to_string())?;
    let role = match user.role {
        Role::Customer => stockline::auth::Role::Customer,
        Role::Operator => stockline::auth::Role::Operator,
        Role::Admin => stockline::auth::Role::Admin,
    };
    let name = if user.name.trim().is_empty() {
        email.clone()
    } else {
        user.name.trim().to_owned()
    };
    let created = stockline::http::users::insert(&db, &email, None, &name, role, &hash)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "created user {} ({}) as {}",
        created.id, created.email, created.role
    );
    Ok(())
}

fn serve(config: Config) -> ExitCode {
    // Every connection is a file: a flash sale's thousands of clients must not meet the
    // default soft limit (often 1,024) while the hard limit allows more. The bound on
    // connections (`STOCKLINE_MAX_CONNECTIONS`' default) is taken from the raised limit.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open-file limit"),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("stockline: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(config.addr).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("stockline: cannot listen on {}: {error}", config.addr);
                return ExitCode::FAILURE;
            }
        };
        let (addr, server) = match startup::launch(listener, config, shutdown_signal()).await {
            Ok(started) => started,
            Err(error) => {
                eprintln!("stockline: cannot start: {error}");
                return ExitCode::FAILURE;
            }
        };
        println!("stockline listening on http://{addr}");
        match server.await {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(error)) => {
                eprintln!("stockline: server error: {error}");
                ExitCode::FAILURE
            }
            Err(error) => {
                eprintln!("stockline: server task failed: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_flags_override_the_defaults() {
        let cli = Cli::try_parse_from([
            "stockline",
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--durability",
            "async",
            "--bcrypt-cost",
            "4",
        ])
        .unwrap();
        let Some(Command::Serve(config)) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(config.addr.port(), 0);
        assert_eq!(config.durability, stockline::config::Durability::Async);
        assert_eq!(config.bcrypt_cost, 4);
        assert_eq!(config.flush_interval_ms, 5);
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        for args in [
            ["stockline", "serve", "--reservation-ttl-secs", "604801"],
            ["stockline", "serve", "--durability", "sometimes"],
            ["stockline", "serve", "--bcrypt-cost", "99"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn user_create_takes_a_role() {
        let cli = Cli::try_parse_from([
            "stockline",
            "user",
            "create",
            "--email",
            "a@b.c",
            "--password",
            "secret123",
            "--role",
            "admin",
        ])
        .unwrap();
        let Some(Command::User(UserCommand::Create(user))) = cli.command else {
            panic!("not user create")
        };
        assert_eq!((user.email.as_str(), user.role), ("a@b.c", Role::Admin));
        assert!(
            Cli::try_parse_from([
                "stockline",
                "user",
                "create",
                "--email",
                "a@b.c",
                "--password",
                "x",
                "--role",
                "root"
            ])
            .is_err()
        );
    }
}

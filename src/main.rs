//! The `tandem` binary: parse configuration, set up logging, open the store, run a subcommand.

use anyhow::Context as _;
use clap::Parser as _;
use tandem::cli;
use tandem::config::{Cli, Command, Config, LogFormat, SecretSource, UserCommand};
use tandem::pipeline::cluster::{self, Cluster, Standalone};
use tandem::pipeline::hub::Hub;
use tandem::server::{self, AppState, PipelineSetup};
use tandem::store::{self, UserRole};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = cli.options.resolve()?;
    init_tracing(config.log_format);
    if let Some(Command::Decode {
        format,
        out,
        wav,
        chunks,
    }) = &cli.command
    {
        return decode(format.as_deref(), out.as_deref(), wav.as_deref(), chunks);
    }

    let secret_source = config.load_jwt_secret()?;
    if secret_source == SecretSource::Generated {
        tracing::warn!(
            path = %config.jwt_secret_path().display(),
            "TANDEM_JWT_SECRET is not set: generated a random secret and saved it; set \
             TANDEM_JWT_SECRET in production and keep it out of backups of the database"
        );
    }
    let store = store::open(
        &config.database,
        config.data_keys.clone(),
        config.require_sealed,
    )
    .await
    .with_context(|| {
        format!(
            "cannot open the database {:?}",
            store::display_database(&config.database)
        )
    })?;
    let auth = config.auth().context("the JWT secret was not loaded")?;
    let pipeline = PipelineSetup {
        providers: server::openai_providers(config.openai(), config.realtime())
            .context("cannot build the provider clients")?,
        config: config.pipeline(),
        pool: config.dsp_pool(),
    };
    let hub = std::sync::Arc::new(Hub::new());
    // Only a server coordinates with other instances; the one-shot commands stay standalone.
    let cluster: std::sync::Arc<dyn Cluster> = match &cli.command {
        None | Some(Command::Serve) => {
            cluster::for_database(&config.database, config.data_keys.clone(), hub.clone())
                .await
                .context("cannot start the instance coordination")?
        }
        Some(_) => std::sync::Arc::new(Standalone::new(hub.clone())),
    };
    let state = AppState::in_cluster(store.clone(), auth, config.http(), pipeline, hub, cluster)?
        .with_webhook(config.webhook.clone())
        .with_retention(config.retention.clone());

    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config, state).await,
        Command::Migrate => {
            for m in store.applied_migrations().await? {
                println!(
                    "{:04}\tapplied {}",
                    m.version,
                    tandem::wire::iso_millis(m.applied_at)
                );
            }
            Ok(())
        }
        Command::User(UserCommand::Add {
            username,
            organization,
            language,
            admin,
        }) => {
            let password = cli::read_password()?;
            let role = if admin {
                UserRole::Admin
            } else {
                UserRole::Clinician
            };
            let user = cli::user_add(
                store.as_ref(),
                &state.auth,
                &username,
                organization.as_deref(),
                &language,
                role,
                &password,
            )
            .await?;
            println!("created {} ({})", user.username, user.id);
            Ok(())
        }
        Command::User(UserCommand::List) => {
            for line in cli::user_list(store.as_ref()).await? {
                println!("{line}");
            }
            Ok(())
        }
        Command::User(UserCommand::Passwd { username }) => {
            let password = cli::read_password()?;
            cli::user_passwd(store.as_ref(), &state.auth, &username, &password).await?;
            println!("password changed for {username}");
            Ok(())
        }
        Command::RotateDataKey { batch_size } => {
            let total = cli::rotate_data_key(store.as_ref(), batch_size, |done| {
                eprintln!("re-encrypted {done} values so far");
            })
            .await?;
            println!(
                "done: re-encrypted {} values, {} of them plaintext from before encryption; \
                 every stored value uses the active key",
                total.values, total.plaintext
            );
            println!(
                "the database is marked as fully sealed: instances started from now on refuse \
                 unsealed values unless TANDEM_REQUIRE_SEALED=false"
            );
            Ok(())
        }
        Command::Decode { .. } => Ok(()), // handled above, before opening the database
        Command::Token { username } => {
            println!(
                "{}",
                cli::token(store.as_ref(), &state.auth, &username).await?
            );
            Ok(())
        }
    }
}

async fn serve(config: Config, state: AppState) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    if config.openai_api_key.is_none()
        && config.openai_base_url.host_str() == Some("api.openai.com")
    {
        tracing::warn!(
            "TANDEM_OPENAI_API_KEY is not set: transcription, translation and speech will fail \
             until it is (or point --openai-base-url at a self-hosted server)"
        );
    }
    if state.store.count_users().await? == 0 {
        tracing::info!(
            "no accounts yet: register from the frontend, or run `tandem user add <username>`"
        );
    }
    tracing::info!(
        database = %store::display_database(&config.database),
        openai_base_url = %config.openai_base_url,
        "Tandem {} serving on http://{}",
        env!("CARGO_PKG_VERSION"),
        listener.local_addr().unwrap_or(config.listen)
    );
    server::run(listener, state, tandem::shutdown::signal()).await;
    Ok(())
}

fn decode(
    format: Option<&str>,
    out: Option<&std::path::Path>,
    wav: Option<&std::path::Path>,
    chunks: &[std::path::PathBuf],
) -> anyhow::Result<()> {
    let report = cli::decode_files(chunks, format)?;
    for (chunk, error) in &report.errors {
        match chunk {
            Some(i) => eprintln!(
                "chunk {i} ({}): {} [{}]",
                chunks[*i].display(),
                error,
                error.code()
            ),
            None => eprintln!("end of input: {} [{}]", error, error.code()),
        }
    }
    println!(
        "decoded {} chunks: {:.3} s of PCM16 mono 24 kHz ({} samples), {} packets, {} skipped, {} recording(s), {} error(s)",
        chunks.len(),
        report.duration_ms() / 1000.0,
        report.samples.len(),
        report.stats.packets,
        report.stats.packets_skipped,
        report.stats.recordings,
        report.errors.len()
    );
    if let Some(path) = out {
        std::fs::write(path, cli::pcm_bytes(&report.samples))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = wav {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        cli::write_wav(std::io::BufWriter::new(file), &report.samples)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if report.errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} decode error(s)", report.errors.len())
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TANDEM_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

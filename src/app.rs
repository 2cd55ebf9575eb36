//! Builds the whole gateway from settings: store, sources, fetcher,
//! forwarder, both listeners.
//! Binding happens here so tests can ask for port 0 and read the real port.

use std::{
    net::{SocketAddr, TcpListener},
    num::NonZeroUsize,
    rc::Rc,
    sync::Arc,
    time::Duration,
};

use actix_web::{HttpServer, dev::Server, web};

use crate::{
    fetcher::Fetcher,
    forwarder::{self, Forwarder},
    http::{self, AppState, Listener, Routes, Sources, admin::AdminAuth},
    hubspot::HubSpotClient,
    metrics::Metrics,
    operations::Operations,
    record::now_ms,
    settings::Settings,
    sources::{
        Fetch, Source,
        eventbrite::{self, Eventbrite, EventbriteApi},
        generic::{Generic, GenericConfigError},
        zoom::Zoom,
    },
    status::LiveStatus,
    store::{self, OpenError, Store, StoreOptions},
    token::{self, CredentialConfigError},
};

/// How long in-flight requests may take to finish after SIGTERM.
const SHUTDOWN_GRACE: u64 = 30;
/// How long batches and fetches under way at SIGTERM may take to finish
/// and settle (inside Kubernetes' default 30 s); one still at work then is
/// cut off as a crash would cut it, and sent again once its lease runs out.
const BACKGROUND_GRACE: Duration = Duration::from_secs(20);
/// A request's head must arrive within this (else 408 and the connection is
/// closed), so a client trickling header lines cannot hold a connection.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle keep-alive connection is closed after this.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A kept-alive connection's next head must be complete this long after the
/// answer before it (actix-web times only a connection's first head): the
/// idle wait, then a head's own time.
const NEXT_HEAD_LIMIT: Duration = KEEP_ALIVE.saturating_add(HEAD_TIMEOUT);
/// A closing connection whose client does not finish its side is dropped after this.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const PURGE_EVERY: Duration = Duration::from_secs(600);
/// Rows one purge commit removes: small enough that ingest's commits never
/// wait long behind it.
const PURGE_CHUNK: u64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open the store: {0}")]
    Store(#[from] OpenError),
    #[error("invalid {0}: {1}")]
    Setting(&'static str, String),
    #[error("invalid HubSpot credential settings: {0}")]
    Credential(#[from] CredentialConfigError),
    #[error("invalid generic source settings: {0}")]
    Generic(#[from] GenericConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

impl StartupError {
    /// The settings cannot work (as opposed to the store or the network failing).
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            Self::Setting(..)
                | Self::Credential(_)
                | Self::Generic(_)
                | Self::Store(OpenError::Setting(_))
        )
    }
}

pub struct Application {
    public: Server,
    admin: Server,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    store: Arc<dyn Store>,
    forwarder: Forwarder,
    fetcher: Fetcher,
    retention_ms: i64,
}

fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), StartupError> {
    let bound = TcpListener::bind(addr).and_then(|listener| {
        let local = listener.local_addr()?;
        Ok((listener, local))
    });
    bound.map_err(|source| StartupError::Bind {
        addr: addr.to_owned(),
        source,
    })
}

/// The server of one listener, with the timeouts both share; the process's
/// signals are the application's to handle. Public connections are watched
/// for trickled heads.
fn serve(
    (listener, addr): (TcpListener, SocketAddr),
    workers: Option<NonZeroUsize>,
    state: web::Data<AppState>,
    routes: Routes,
) -> Result<Server, StartupError> {
    let watched = routes.listener() == Listener::Public;
    let mut server = HttpServer::new(move || http::app(state.clone(), routes.clone())).on_connect(
        move |io, data| {
            if watched {
                http::connection::watch(io, data, NEXT_HEAD_LIMIT);
            }
        },
    );
    // Else actix-web's default: one worker per core.
    if let Some(workers) = workers {
        server = server.workers(workers.get());
    }
    let server = server
        .client_request_timeout(HEAD_TIMEOUT)
        .keep_alive(KEEP_ALIVE)
        .client_disconnect_timeout(DISCONNECT_TIMEOUT)
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE)
        .listen(listener)
        .map_err(|source| StartupError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    Ok(server.run())
}

/// The configured sources, each one's series visible from the start, and
/// the platforms whose deliveries the fetcher completes from their API.
fn sources_from(
    settings: &Settings,
    metrics: &Metrics,
) -> Result<(Sources, Vec<Rc<dyn Fetch>>), StartupError> {
    let eventbrite_api = eventbrite::api_base(settings.eventbrite_api_base_url.as_str())
        .map_err(|err| StartupError::Setting("EVENTBRITE_API_BASE_URL", err.to_string()))?;
    let sources = Sources {
        zoom: settings.zoom_webhook_secret_token.as_ref().map(|secret| {
            web::Data::new(Zoom::new(
                secret.clone(),
                settings.zoom_signature_tolerance_secs,
                settings.zoom_external_account_id.clone(),
            ))
        }),
        eventbrite: settings.eventbrite_webhook_token.as_ref().map(|token| {
            web::Data::new(Eventbrite::new(
                token.clone(),
                eventbrite_api.clone(),
                settings.eventbrite_external_account_id.clone(),
            ))
        }),
        generic: Generic::from_settings(settings)?.map(web::Data::new),
    };
    if sources.zoom.is_some() {
        metrics.init_source(Zoom::NAME);
    }
    if sources.generic.is_some() {
        metrics.init_source(Generic::NAME);
    }
    let mut platforms: Vec<Rc<dyn Fetch>> = Vec::new();
    if sources.eventbrite.is_some() {
        metrics.init_fetching_source(Eventbrite::NAME);
        platforms.push(Rc::new(EventbriteApi::new(
            settings.eventbrite_api_token.clone(),
            eventbrite_api,
            settings.eventbrite_external_account_id.clone(),
        )));
    }
    Ok((sources, platforms))
}

impl Application {
    pub fn build(settings: Settings) -> Result<Self, StartupError> {
        let store = store::open(
            settings.database_url.expose(),
            &StoreOptions::from_settings(&settings),
        )?;
        let metrics = Arc::new(Metrics::new());
        let status = Arc::new(LiveStatus::default());
        let (sources, platforms) = sources_from(&settings, &metrics)?;
        let forwarder_wake = Arc::new(tokio::sync::Notify::new());
        let fetcher_wake = Arc::new(tokio::sync::Notify::new());
        let forwarder = forwarder_from(
            &settings,
            &store,
            &metrics,
            &status,
            Arc::clone(&forwarder_wake),
        )?;
        let fetcher = Fetcher::new(
            store.clone(),
            platforms,
            Duration::from_secs(settings.max_record_age_secs),
            Arc::clone(&metrics),
            Arc::clone(&fetcher_wake),
            Arc::clone(&forwarder_wake),
        );
        // The admin API exists only with its key: without one its routes are absent (404).
        let admin_api = settings.admin_jwt_secret.as_ref().map(|secret| {
            let ops = Operations::new(Arc::clone(&store), &settings, Some(Arc::clone(&status)));
            (web::Data::new(AdminAuth::new(secret)), web::Data::new(ops))
        });
        let state = web::Data::new(AppState {
            store: Arc::clone(&store),
            metrics,
            status,
            max_body_bytes: settings.max_body_bytes.get(),
            in_flight: tokio::sync::Semaphore::new(
                (settings.max_inflight_bytes / 1024).clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            ),
            forwarder_wake,
            fetcher_wake,
        });

        let public = bind(&settings.listen_addr)?;
        let admin = bind(&settings.admin_addr)?;
        let (public_addr, admin_addr) = (public.1, admin.1);
        let public = serve(
            public,
            settings.workers,
            state.clone(),
            Routes::Public(sources),
        )?;
        let admin = serve(admin, NonZeroUsize::new(1), state, Routes::Admin(admin_api))?;
        tracing::info!(%public_addr, %admin_addr, store = %settings.database_url.redacted(), "listening");
        Ok(Self {
            public,
            admin,
            public_addr,
            admin_addr,
            store,
            forwarder,
            fetcher,
            retention_ms: i64::try_from(settings.retention().as_millis()).unwrap_or(i64::MAX),
        })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The store this instance writes to (for the demo's report and tests).
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// Serves until SIGTERM or Ctrl-C, then stops accepting, lets requests in
    /// flight finish (their commits included) and closes the store.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `stop` resolves; the graceful part of [`Self::run_until_stopped`].
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let (public, admin) = (self.public.handle(), self.admin.handle());
        let janitor =
            actix_web::rt::spawn(purge_settled(Arc::clone(&self.store), self.retention_ms));
        let (stopping, stop_signal) = tokio::sync::watch::channel(false);
        let stopped = || {
            let mut signal = stop_signal.clone();
            async move {
                let _ = signal.wait_for(|stop| *stop).await;
            }
        };
        let mut forwarder = actix_web::rt::spawn(self.forwarder.run(stopped()));
        let mut fetcher = actix_web::rt::spawn(self.fetcher.run(stopped()));
        // The servers run as their own task: they must keep being polled while
        // the stop below waits for them to drain.
        let mut servers =
            actix_web::rt::spawn(async move { tokio::try_join!(self.public, self.admin) });
        // The background tasks return only once stopped; one that returns
        // before has panicked, and a gateway that stores but no longer
        // forwards must exit to be restarted.
        let failed = |task: &str, ended: Result<(), tokio::task::JoinError>| {
            tracing::error!(task, error = ?ended.err(), "background task stopped; shutting down");
            std::io::Error::other(format!("the {task} stopped"))
        };
        let (mut forwarder_running, mut fetcher_running) = (true, true);
        let (drain, failure) = tokio::select! {
            result = &mut servers => (false, result.map_or_else(|e| Some(std::io::Error::other(e)), |r| r.err())),
            () = stop => (true, None),
            ended = &mut forwarder => {
                forwarder_running = false;
                (true, Some(failed("forwarder", ended)))
            }
            ended = &mut fetcher => {
                fetcher_running = false;
                (true, Some(failed("fetcher", ended)))
            }
        };
        let mut result = failure.map_or(Ok(()), Err);
        // When draining, the background tasks may finish what is under way.
        let grace = drain.then(|| tokio::time::Instant::now() + BACKGROUND_GRACE);
        if drain {
            tracing::info!("shutting down: finishing requests and batches in flight");
            stopping.send_replace(true);
            tokio::join!(public.stop(true), admin.stop(true));
            let drained = servers
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            result = result.and(drained.map(drop));
        }
        janitor.abort();
        // Awaited so they are gone before the store closes (a finished
        // handle must not be polled again).
        for (running, mut task, name) in [
            (forwarder_running, forwarder, "forwarder"),
            (fetcher_running, fetcher, "fetcher"),
        ] {
            if !running {
                continue;
            }
            if let Some(until) = grace {
                if tokio::time::timeout_at(until, &mut task).await.is_ok() {
                    continue;
                }
                tracing::warn!(task = name, "still at work after the grace period; cut off");
            }
            task.abort();
            let _ = task.await;
        }
        self.store.close().await;
        tracing::info!("stopped");
        result
    }
}

fn forwarder_from(
    settings: &Settings,
    store: &Arc<dyn Store>,
    metrics: &Arc<Metrics>,
    status: &Arc<LiveStatus>,
    wake: Arc<tokio::sync::Notify>,
) -> Result<Forwarder, CredentialConfigError> {
    let token = token::from_settings(
        settings,
        store.clone(),
        Arc::clone(metrics),
        Arc::clone(status),
    )?;
    let hubspot = HubSpotClient::new(
        settings.hubspot_base_url.as_str(),
        token,
        settings.hubspot_rate_limit_per_10s.get(),
        Duration::from_millis(settings.hubspot_request_timeout_ms),
        Arc::clone(metrics),
        store.clone(),
    );
    let config = forwarder::Config {
        batch_size: settings.hubspot_batch_size.get(),
        linger: Duration::from_millis(settings.batch_linger_ms),
        max_record_age: Duration::from_secs(settings.max_record_age_secs),
        create_contacts: settings.create_contacts,
        upsert_events: settings.upsert_events,
        complete_delay: Duration::from_secs(settings.complete_delay_secs),
    };
    Ok(Forwarder::new(
        store.clone(),
        hubspot,
        config,
        Arc::clone(metrics),
        Arc::clone(status),
        wake,
    ))
}

async fn purge_settled(store: Arc<dyn Store>, retention_ms: i64) {
    let mut every = tokio::time::interval(PURGE_EVERY);
    loop {
        every.tick().await;
        let cutoff = now_ms() - retention_ms;
        let mut removed = 0;
        loop {
            match store.purge_settled(cutoff, PURGE_CHUNK).await {
                Ok(n) => {
                    removed += n;
                    if n < PURGE_CHUNK {
                        break;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "purge of settled records failed");
                    break;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "purged settled records past retention");
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

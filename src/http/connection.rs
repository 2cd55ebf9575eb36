//! Bounds how long a kept-alive connection may take to deliver its next
//! request head. actix-web times the first head of a connection
//! (`client_request_timeout`) and closes a connection that sends nothing
//! (`keep_alive`), but a client that answers its first answer by trickling the
//! next head a byte at a time holds the connection for as long as it likes;
//! enough such clients exhaust the process's file descriptors.
//!
//! Each public connection gets a watch: between requests (from the connect,
//! or from an answer) the next head must be complete within `limit`, or the
//! watch shuts the socket down. A request being handled is not timed here
//! (its body has a deadline of its own).

use std::{
    cell::Cell,
    net::Shutdown,
    os::fd::AsFd,
    rc::Rc,
    time::{Duration, Instant},
};

use actix_web::{
    body::MessageBody,
    dev::{Extensions, ServiceRequest, ServiceResponse},
    middleware::Next,
};
use tokio::sync::oneshot;

/// How often a watch looks at its connection.
const TICK: Duration = Duration::from_millis(500);

#[derive(Clone, Copy)]
enum Phase {
    /// Waiting for the next head since then.
    Between(Instant),
    Handling,
}

/// Kept in the connection's data: the phase the middleware updates, and the
/// end of the watch when the connection is dropped.
struct Watched {
    phase: Rc<Cell<Phase>>,
    _ended: oneshot::Sender<()>,
}

/// For `HttpServer::on_connect`: starts the watch of a new plain TCP connection.
pub fn watch(io: &dyn std::any::Any, data: &mut Extensions, limit: Duration) {
    let Some(stream) = io.downcast_ref::<actix_web::rt::net::TcpStream>() else {
        return;
    };
    // A descriptor of its own for the same socket: shutting it down ends the
    // connection for actix-web too, and it can never name another socket.
    let Ok(socket) = stream.as_fd().try_clone_to_owned() else {
        return;
    };
    let socket = std::net::TcpStream::from(socket);
    let phase = Rc::new(Cell::new(Phase::Between(Instant::now())));
    let (ended, mut dropped) = oneshot::channel();
    data.insert(Watched {
        phase: Rc::clone(&phase),
        _ended: ended,
    });
    actix_web::rt::spawn(async move {
        loop {
            tokio::select! {
                // The connection is gone: release the descriptor at once.
                _ = &mut dropped => return,
                () = actix_web::rt::time::sleep(TICK) => {}
            }
            if let Phase::Between(since) = phase.get()
                && since.elapsed() > limit
            {
                let _ = socket.shutdown(Shutdown::Both);
                return;
            }
        }
    });
}

/// Middleware of the public app: marks the connection busy while a request
/// is handled, and when its answer leaves.
pub async fn mark_requests(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let phase = request
        .conn_data::<Watched>()
        .map(|watched| Rc::clone(&watched.phase));
    if let Some(phase) = &phase {
        phase.set(Phase::Handling);
    }
    let answer = next.call(request).await;
    if let Some(phase) = phase {
        phase.set(Phase::Between(Instant::now()));
    }
    answer
}

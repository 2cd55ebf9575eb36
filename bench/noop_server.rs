//! Baseline for `bench/ingest.sh`: the same actix-web stack answering a JSON
//! webhook without verifying or storing it.

use actix_web::{App, HttpResponse, HttpServer, web};

async fn noop(body: web::Json<serde_json::Value>) -> HttpResponse {
    let _ = body.into_inner();
    HttpResponse::Ok().json(serde_json::json!({"accepted": 1, "duplicates": 0, "ignored": 0}))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("NOOP_ADDR").unwrap_or_else(|_| "127.0.0.1:18181".to_owned());
    HttpServer::new(|| App::new().route("/webhooks/zoom", web::post().to(noop)))
        .workers(1)
        .bind(addr)?
        .run()
        .await
}

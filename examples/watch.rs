//! Prints the live frames of one user's WebSocket: `cargo run --example watch -- URL TOKEN`
//! (URL like ws://127.0.0.1:8080/api/v1/connect). Used by examples/tour.sh.

use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(token)) = (args.next(), args.next()) else {
        eprintln!("usage: watch WS_URL TOKEN");
        std::process::exit(2);
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?token={token}")).await?;
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Text(t) => println!("ws> {t}"),
            Message::Close(c) => {
                println!("ws> closed {c:?}");
                break;
            }
            _ => {}
        }
    }
    Ok(())
}

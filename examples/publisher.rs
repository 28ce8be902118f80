//! A broadcaster: logs in and publishes a slide (`TEXT ...` or `SHOW <url>`).
//!
//! ```text
//! cargo run --example publisher -- --body "SHOW https://radio1.example/slide.jpg" \
//!     --topic /topic/fm/4e1/4001/09580/image
//! ```

use clap::Parser;
use radiovis::client::Client;
use radiovis::stomp::{Command, Frame};

#[derive(Debug, Parser)]
#[command(about = "Publish a RadioVis message as a broadcaster")]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:61613")]
    server: String,
    /// Login (`<station id>.<name>`); the demo directory has 1.radio1.
    #[arg(long, default_value = "1.radio1")]
    login: String,
    /// Passcode.
    #[arg(long, default_value = "secret1")]
    passcode: String,
    /// Destination topic.
    #[arg(long, default_value = "/topic/fm/4e1/4001/09580/text")]
    topic: String,
    /// Message body.
    #[arg(long, default_value = "TEXT Hello from radiovis")]
    body: String,
    /// Optional `link` header.
    #[arg(long)]
    link: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut client = Client::connect(
        &args.server,
        &[("login", &args.login), ("passcode", &args.passcode)],
    )
    .await?;
    let mut frame = Frame::new(Command::Send)
        .header("destination", args.topic.clone())
        .header("trigger-time", "NOW")
        .body(args.body.clone().into_bytes());
    if let Some(link) = &args.link {
        frame = frame.header("link", link.clone());
    }
    client.send_with_receipt(frame).await?;
    // In STOMP 1.0 the RECEIPT precedes the effect: give an ERROR a moment to show.
    if let Some(f) = client
        .next_frame_within(std::time::Duration::from_millis(300))
        .await?
    {
        if f.command == Command::Error {
            return Err(format!("refused: {}", f.get("message").unwrap_or("")).into());
        }
    }
    println!("sent {:?} to {}", args.body, args.topic);
    client.disconnect().await?;
    Ok(())
}

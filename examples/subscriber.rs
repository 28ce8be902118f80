//! A radio: subscribes to a station's topics and prints every slide it receives.
//!
//! ```text
//! cargo run --example subscriber -- --topic /topic/fm/ch/4001/09580/text --topic /topic/fm/ch/4001/09580/image
//! ```

use clap::Parser;
use radiovis::client::Client;
use radiovis::stomp::Command;

#[derive(Debug, Parser)]
#[command(about = "Subscribe to RadioVis topics and print the messages")]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:61613")]
    server: String,
    /// Topic to subscribe to (repeat for several).
    #[arg(long, default_value = "/topic/fm/4e1/4001/09580/text")]
    topic: Vec<String>,
    /// STOMP version to ask for (1.0, 1.1, 1.2).
    #[arg(long, default_value = "1.0")]
    version: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut headers = vec![];
    if args.version != "1.0" {
        headers.push(("accept-version", args.version.as_str()));
    }
    let mut client = Client::connect(&args.server, &headers).await?;
    println!(
        "connected to {} (session {})",
        args.server,
        client.connected.get("session").unwrap_or("?")
    );
    for (i, topic) in args.topic.iter().enumerate() {
        client.subscribe(topic, &i.to_string(), &[]).await?;
        println!("subscribed to {topic}");
    }
    loop {
        let frame = client.next_frame().await?;
        match frame.command {
            Command::Message => println!(
                "{}  {}",
                frame.get("destination").unwrap_or("?"),
                String::from_utf8_lossy(&frame.body)
            ),
            Command::Error => println!("ERROR: {}", frame.get("message").unwrap_or("")),
            _ => {}
        }
    }
}

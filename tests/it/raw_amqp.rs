//! A publisher that writes its AMQP frames by hand, for what lapin cannot send: headers nested deeper than its
//! (recursive) encoder gets through on a thread's default stack.

use std::str::FromStr;

use lapin::uri::AMQPUri;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;

/// A header table of one entry, `nested`: an array in an array, `depth` deep, encoded without recursion.
pub fn nested_headers(depth: usize) -> Vec<u8> {
    let mut value = Vec::new();
    for _ in 0..depth {
        let length = u32::try_from(value.len()).expect("fits");
        let mut outer = Vec::with_capacity(value.len() + 5);
        outer.push(b'A');
        outer.extend_from_slice(&length.to_be_bytes());
        outer.extend_from_slice(&value);
        value = outer;
    }
    let mut entry = Vec::with_capacity(value.len() + 7);
    short_string(&mut entry, "nested");
    entry.extend_from_slice(&value);
    let mut table = u32::try_from(entry.len()).expect("fits").to_be_bytes().to_vec();
    table.extend_from_slice(&entry);
    table
}

/// Publishes `body` to `queue` with `headers` (an encoded field table) as its only property.
pub async fn publish_with_encoded_headers(url: &str, queue: &str, headers: &[u8], body: &[u8]) {
    publish_with_properties(url, queue, (0x2000, headers), body).await;
}

/// Publishes `body` to `queue` with a `message-id` of these bytes, UTF-8 or not, as its only property.
pub async fn publish_with_message_id(url: &str, queue: &str, id: &[u8], body: &[u8]) {
    let mut property = vec![u8::try_from(id.len()).expect("a short string")];
    property.extend_from_slice(id);
    publish_with_properties(url, queue, (0x0080, &property), body).await;
}

/// Publishes `body` to `queue` through the default exchange with `properties` (their flags, and their values
/// encoded in order), then closes the connection: the broker answers the close once it has routed the message.
async fn publish_with_properties(url: &str, queue: &str, (flags, properties): (u16, &[u8]), body: &[u8]) {
    let uri = AMQPUri::from_str(url).expect("an AMQP URL");
    let mut stream = TcpStream::connect((uri.authority.host.as_str(), uri.authority.port)).await.expect("connect");
    stream.write_all(b"AMQP\x00\x00\x09\x01").await.expect("protocol header");
    expect_method(&mut stream, (10, 10)).await;
    let mut start_ok = 0_u32.to_be_bytes().to_vec();
    short_string(&mut start_ok, "PLAIN");
    let credentials = format!("\0{}\0{}", uri.authority.userinfo.username, uri.authority.userinfo.password);
    start_ok.extend_from_slice(&u32::try_from(credentials.len()).expect("fits").to_be_bytes());
    start_ok.extend_from_slice(credentials.as_bytes());
    short_string(&mut start_ok, "en_US");
    send_method(&mut stream, 0, (10, 11), &start_ok).await;
    // tune-ok takes what the broker proposed: channel-max, frame-max, heartbeat.
    let tune = expect_method(&mut stream, (10, 30)).await;
    send_method(&mut stream, 0, (10, 31), &tune).await;
    let mut open = Vec::new();
    short_string(&mut open, &uri.vhost);
    open.extend_from_slice(&[0, 0]);
    send_method(&mut stream, 0, (10, 40), &open).await;
    expect_method(&mut stream, (10, 41)).await;
    send_method(&mut stream, 1, (20, 10), &[0]).await;
    expect_method(&mut stream, (20, 11)).await;

    let mut publish = 0_u16.to_be_bytes().to_vec();
    short_string(&mut publish, "");
    short_string(&mut publish, queue);
    publish.push(0);
    send_method(&mut stream, 1, (60, 40), &publish).await;
    let mut content_header = [60_u16.to_be_bytes(), 0_u16.to_be_bytes()].concat();
    content_header.extend_from_slice(&(body.len() as u64).to_be_bytes());
    content_header.extend_from_slice(&flags.to_be_bytes());
    content_header.extend_from_slice(properties);
    send_frame(&mut stream, FRAME_HEADER, 1, &content_header).await;
    send_frame(&mut stream, FRAME_BODY, 1, body).await;

    let mut close = 200_u16.to_be_bytes().to_vec();
    short_string(&mut close, "done");
    close.extend_from_slice(&[0, 0, 0, 0]);
    send_method(&mut stream, 0, (10, 50), &close).await;
    expect_method(&mut stream, (10, 51)).await;
}

fn short_string(into: &mut Vec<u8>, text: &str) {
    into.push(u8::try_from(text.len()).expect("a short string"));
    into.extend_from_slice(text.as_bytes());
}

async fn send_method(stream: &mut TcpStream, channel: u16, (class, method): (u16, u16), arguments: &[u8]) {
    let payload = [&class.to_be_bytes()[..], &method.to_be_bytes(), arguments].concat();
    send_frame(stream, FRAME_METHOD, channel, &payload).await;
}

async fn send_frame(stream: &mut TcpStream, kind: u8, channel: u16, payload: &[u8]) {
    let mut frame = vec![kind];
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&u32::try_from(payload.len()).expect("fits").to_be_bytes());
    frame.extend_from_slice(payload);
    frame.push(FRAME_END);
    stream.write_all(&frame).await.expect("frame sent");
}

/// Reads frames until a method; it must be `expected` (a close from the broker fails with its reason).
/// Returns the method's arguments.
async fn expect_method(stream: &mut TcpStream, expected: (u16, u16)) -> Vec<u8> {
    loop {
        let mut head = [0_u8; 7];
        stream.read_exact(&mut head).await.expect("a frame");
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut payload = vec![0_u8; size + 1];
        stream.read_exact(&mut payload).await.expect("the frame's payload");
        assert_eq!(payload.pop(), Some(FRAME_END), "frame end");
        if head[0] == FRAME_HEARTBEAT {
            continue;
        }
        assert_eq!(head[0], FRAME_METHOD, "a method frame");
        let method = (u16::from_be_bytes([payload[0], payload[1]]), u16::from_be_bytes([payload[2], payload[3]]));
        assert_eq!(method, expected, "the broker answered {}", String::from_utf8_lossy(&payload[4..]));
        return payload.split_off(4);
    }
}

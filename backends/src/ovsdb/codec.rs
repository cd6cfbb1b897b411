//! JSON-RPC 1.0 framing for OVSDB.
//!
//! OVSDB has no length prefix or delimiter: messages are JSON objects written back to back. One
//! socket read may hold several messages (monitor updates arrive in bursts) or part of one (large
//! initial replies). The decoder lets serde_json's `StreamDeserializer` find where the first value
//! ends (`byte_offset`) and consumes exactly that much, leaving the rest for the next call. A
//! cheap incremental bracket scan decides when it is worth parsing at all.

use bytes::{Buf, BufMut, BytesMut};
use serde_json::Value as Json;
use tokio_util::codec::{Decoder, Encoder};

use super::error::OvsdbError;

/// A buffer larger than this is given back once it is empty. A big message (the initial monitor
/// reply of a node with 3,000 ports, a transaction holding or releasing 1,000 ports at once)
/// grows a buffer to megabytes, which would otherwise stay allocated, and resident, for the
/// life of the connection (2 MiB of an agent's 14 MiB live heap with 1,000 routers).
const KEEP_BUFFER_BYTES: usize = 64 * 1024;

/// Largest message we are willing to buffer. A full vswitch database is a few MiB even on big
/// hypervisors; anything larger means a runaway peer and must not grow memory without bound.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Encodes and decodes JSON-RPC messages (always JSON objects) on an OVSDB stream.
#[derive(Debug, Default)]
pub struct JsonRpcCodec {
    scan: Scan,
    /// The buffer has held more than [`KEEP_BUFFER_BYTES`] since it was last given back.
    grown: bool,
}

/// Bracket-depth scan of the message at the front of the buffer, resumed where the previous read
/// stopped. It only tells when the closing brace has arrived, so a multi-megabyte initial monitor
/// reply arriving in many reads is parsed once instead of once per read.
#[derive(Debug, Default, Clone, Copy)]
struct Scan {
    pos: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl Scan {
    /// True once `buf` holds the end of the first top-level object (strings and escapes aware).
    fn complete(&mut self, buf: &[u8]) -> bool {
        while let Some(&b) = buf.get(self.pos) {
            self.pos += 1;
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return true;
                    }
                }
                _ => {}
            }
        }
        false
    }
}

/// What a framing buffer starts with (tokio-util's own initial capacity).
const INITIAL_BUFFER_BYTES: usize = 8 * 1024;

/// Gives back a buffer a big message grew (see [`KEEP_BUFFER_BYTES`]) once it is empty. The
/// size of its allocation is no longer visible once its contents have been consumed, hence
/// `grown`, noted while the message was in it.
fn shrink_if_empty(buf: &mut BytesMut, grown: &mut bool) {
    if *grown && buf.is_empty() {
        *buf = BytesMut::with_capacity(INITIAL_BUFFER_BYTES);
        *grown = false;
    }
}

fn garbage(buf: &[u8], reason: impl Into<String>) -> OvsdbError {
    let end = buf.len().min(64);
    OvsdbError::Decode {
        snippet: String::from_utf8_lossy(&buf[..end]).into_owned(),
        reason: reason.into(),
    }
}

impl Decoder for JsonRpcCodec {
    type Item = Json;
    type Error = OvsdbError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Json>, OvsdbError> {
        let Some(start) = buf.iter().position(|b| !b.is_ascii_whitespace()) else {
            buf.clear();
            return Ok(None);
        };
        buf.advance(start);
        // Only objects are valid messages. Checking the first byte also matters for framing: a bare
        // number split across reads ("12" then "3") would otherwise parse as a complete value.
        if buf[0] != b'{' {
            return Err(garbage(buf, "a JSON-RPC message must be a JSON object"));
        }
        if !self.scan.complete(buf) {
            if buf.len() > MAX_MESSAGE_BYTES {
                return Err(garbage(buf, format!("message exceeds {MAX_MESSAGE_BYTES} bytes")));
            }
            return Ok(None);
        }
        self.scan = Scan::default();
        self.grown |= buf.capacity() > KEEP_BUFFER_BYTES;
        let mut stream = serde_json::Deserializer::from_slice(buf).into_iter::<Json>();
        match stream.next() {
            Some(Ok(value)) => {
                let consumed = stream.byte_offset();
                buf.advance(consumed);
                shrink_if_empty(buf, &mut self.grown);
                Ok(Some(value))
            }
            Some(Err(e)) => Err(garbage(buf, e.to_string())),
            None => Err(garbage(buf, "no JSON value where one was expected")),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Json>, OvsdbError> {
        match self.decode(buf)? {
            Some(value) => Ok(Some(value)),
            None if buf.is_empty() => Ok(None),
            None => Err(garbage(buf, "connection closed in the middle of a message")),
        }
    }
}

impl Encoder<Json> for JsonRpcCodec {
    type Error = OvsdbError;

    fn encode(&mut self, item: Json, dst: &mut BytesMut) -> Result<(), OvsdbError> {
        // Everything encoded before has been written: a buffer a big message grew goes now.
        shrink_if_empty(dst, &mut self.grown);
        serde_json::to_writer(dst.writer(), &item)
            .map_err(|e| OvsdbError::Protocol(format!("cannot encode message: {e}")))?;
        self.grown |= dst.capacity() > KEEP_BUFFER_BYTES;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn decode_all(codec: &mut JsonRpcCodec, buf: &mut BytesMut) -> Vec<Json> {
        let mut out = Vec::new();
        while let Some(v) = codec.decode(buf).expect("decode") {
            out.push(v);
        }
        out
    }

    fn sample() -> Vec<Json> {
        vec![
            json!({"id": 1, "result": [{"rows": [{"name": "qg-1", "tag": 4095}]}], "error": null}),
            json!({"id": null, "method": "update", "params": ["m", {"Port": {}}]}),
            json!({"id": "echo", "method": "echo", "params": ["a \"}{\" b", "ü", "[["]}),
            json!({"id": 2, "result": "ends in a backslash\\", "error": {"details": [[], {}]}}),
        ]
    }

    #[test]
    fn several_messages_in_one_buffer() {
        let text: String = sample().iter().map(|v| format!("{v}\n  ")).collect();
        let mut buf = BytesMut::from(text.as_bytes());
        assert_eq!(decode_all(&mut JsonRpcCodec::default(), &mut buf), sample());
        assert!(buf.is_empty());
    }

    #[test]
    fn back_to_back_without_whitespace() {
        let text: String = sample().iter().map(Json::to_string).collect();
        let mut buf = BytesMut::from(text.as_bytes());
        assert_eq!(decode_all(&mut JsonRpcCodec::default(), &mut buf), sample());
    }

    #[test]
    fn split_at_every_byte_position() {
        let text: String = sample().iter().map(Json::to_string).collect();
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            let mut codec = JsonRpcCodec::default();
            let mut buf = BytesMut::from(&bytes[..split]);
            let mut got = decode_all(&mut codec, &mut buf);
            buf.extend_from_slice(&bytes[split..]);
            got.extend(decode_all(&mut codec, &mut buf));
            assert_eq!(got, sample(), "split at byte {split}");
            assert!(codec.decode_eof(&mut buf).expect("eof").is_none());
        }
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let mut buf = BytesMut::from(&b"{\"id\":1}HTTP/1.1 400 Bad Request\r\n"[..]);
        let mut codec = JsonRpcCodec::default();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(json!({"id": 1})));
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(!err.is_transient());
        let msg = err.to_string();
        assert!(msg.contains("HTTP/1.1 400"), "{msg}");
        assert!(msg.contains("must be a JSON object"), "{msg}");

        let mut buf = BytesMut::from(&b"{\"id\": 1,, }"[..]);
        let msg = codec.decode(&mut buf).unwrap_err().to_string();
        assert!(msg.contains("malformed JSON"), "{msg}");
    }

    #[test]
    fn mismatched_brackets_are_garbage() {
        let mut buf = BytesMut::from(&b"{\"id\": [1}]"[..]);
        let msg = JsonRpcCodec::default().decode(&mut buf).unwrap_err().to_string();
        assert!(msg.contains("malformed JSON"), "{msg}");
    }

    #[test]
    fn large_message_in_small_reads() {
        let big = json!({"id": 1, "result": {"Port": (0..2000).map(|i| format!("qg-{i}")).collect::<Vec<_>>()}});
        let text = big.to_string();
        let mut codec = JsonRpcCodec::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in text.as_bytes().chunks(100) {
            buf.extend_from_slice(piece);
            got.extend(decode_all(&mut codec, &mut buf));
        }
        assert_eq!(got, vec![big]);
    }

    /// The allocation behind a buffer whose contents were consumed: reserving on an empty,
    /// unshared `BytesMut` reclaims all of it.
    fn allocation(buf: &mut BytesMut) -> usize {
        buf.reserve(1);
        buf.capacity()
    }

    #[test]
    fn a_buffer_grown_by_a_big_message_is_given_back() {
        let big =
            json!({"id": 1, "result": (0..20_000).map(|i| format!("qg-{i}")).collect::<Vec<_>>()});
        let small = json!({"id": 2, "method": "echo", "params": []});
        // Read side: the big message decoded and nothing left, the allocation goes.
        let mut buf = BytesMut::from(big.to_string().as_bytes());
        assert_eq!(decode_all(&mut JsonRpcCodec::default(), &mut buf), vec![big.clone()]);
        assert!(allocation(&mut buf) <= KEEP_BUFFER_BYTES, "{}", allocation(&mut buf));
        // Unless part of the next message is still in it.
        let mut buf = BytesMut::from(format!("{big}{{\"id\": ").as_bytes());
        assert_eq!(decode_all(&mut JsonRpcCodec::default(), &mut buf), vec![big.clone()]);
        assert!(allocation(&mut buf) > KEEP_BUFFER_BYTES);
        // Write side: once the big message is written (the framing consumes it), the next
        // message starts a small buffer.
        let mut codec = JsonRpcCodec::default();
        let mut buf = BytesMut::new();
        codec.encode(big, &mut buf).unwrap();
        buf.advance(buf.len());
        codec.encode(small, &mut buf).unwrap();
        assert!(allocation(&mut buf) <= KEEP_BUFFER_BYTES, "{}", allocation(&mut buf));
    }

    #[test]
    fn eof_mid_message_is_an_error() {
        let mut buf = BytesMut::from(&b"{\"id\": 1, \"res"[..]);
        let mut codec = JsonRpcCodec::default();
        assert!(codec.decode(&mut buf).unwrap().is_none());
        let msg = codec.decode_eof(&mut buf).unwrap_err().to_string();
        assert!(msg.contains("closed in the middle"), "{msg}");
    }

    #[test]
    fn encode_is_plain_json_rpc_1() {
        let mut buf = BytesMut::new();
        let msg = json!({"id": 7, "method": "echo", "params": []});
        JsonRpcCodec::default().encode(msg.clone(), &mut buf).unwrap();
        let round: Json = serde_json::from_slice(&buf).unwrap();
        assert_eq!(round, msg);
        assert!(!String::from_utf8_lossy(&buf).contains("jsonrpc"));
    }

    proptest! {
        /// Fuzz: arbitrary bytes fed in arbitrary chunks never panic, and decoding stops at the first
        /// error (the connection is dropped then).
        #[test]
        fn decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512),
                                chunk in 1usize..64) {
            let mut codec = JsonRpcCodec::default();
            let mut buf = BytesMut::new();
            'feed: for piece in data.chunks(chunk) {
                buf.extend_from_slice(piece);
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(v)) => prop_assert!(v.is_object()),
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
            let _ = codec.decode_eof(&mut buf);
        }

        /// Valid messages mixed with JSON-looking noise inside strings survive any chunking.
        #[test]
        fn valid_stream_any_chunking(keys in proptest::collection::vec("[a-z{}\\[\\]\" ]{0,12}", 1..6),
                                     chunk in 1usize..32) {
            let msgs: Vec<Json> = keys.iter().enumerate()
                .map(|(i, k)| json!({"id": i, "result": {k.clone(): [k, i]}, "error": null}))
                .collect();
            let text: String = msgs.iter().map(Json::to_string).collect();
            let mut codec = JsonRpcCodec::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in text.as_bytes().chunks(chunk) {
                buf.extend_from_slice(piece);
                got.extend(decode_all(&mut codec, &mut buf));
            }
            prop_assert_eq!(got, msgs);
        }
    }
}

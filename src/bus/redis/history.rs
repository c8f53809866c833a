//! Rider streams in Redis (protocol v1.1): a counter and an epoch in a hash
//! (`<bus.channel>:stream:{<user>}:meta`) and the last `history.size`
//! events in a Redis Stream (`<bus.channel>:stream:{<user>}`) whose entry
//! ids are the offsets. Both keys share the user's hash tag (one Redis
//! Cluster slot) and expire `history.ttl` after the last event.
//!
//! [`APPEND`] places an event and publishes it in one script call, so an
//! event costs one round trip, gets its offset atomically, and reaches
//! every subscriber in offset order. Redis memory per rider: the hash
//! (~100 bytes) plus `history.size` entries of about the envelope's size
//! (300–900 bytes for navigation events), so ~100–200 KiB per active rider
//! at the default 200, and nothing for a rider idle longer than the TTL.

use std::sync::Arc;

use redis::Script;

use crate::bus::Envelope;
use crate::bus::history::{Recovery, new_epoch};
use crate::config::HistoryConfig;

/// KEYS: meta, stream. ARGV: a fresh epoch, history size, TTL in ms, the
/// channel, the envelope as a JSON object without offset and epoch, and
/// the publish command (`PUBLISH`, or `SPUBLISH` on a Redis Cluster, whose
/// channel then shares the keys' hash tag). The envelope published and
/// kept is the given one with `offset` and `epoch` written in front of its
/// other fields.
const APPEND: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local env = '{"offset":' .. offset .. ',"epoch":"' .. epoch .. '",' .. string.sub(ARGV[5], 2)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], offset .. '-1', 'e', env)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call(ARGV[6], ARGV[4], env)
return offset
"#;

/// KEYS: meta, stream. ARGV: a fresh epoch, TTL in ms, the client's offset
/// (-1 for none), the client's epoch. Returns the stream's offset, epoch,
/// the first offset kept (0 when none), and the kept events after the
/// client's offset when the epochs match.
const RECOVER: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset'))
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local first_off = 0
if first[1] then first_off = tonumber(string.match(first[1][1], '^(%d+)')) end
local since = tonumber(ARGV[3])
local out = {}
if since >= 0 and ARGV[4] == epoch and since < offset and first_off > 0 and first_off <= since + 1 then
  local entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-1', '+')
  for i, e in ipairs(entries) do out[i] = e[2][2] end
end
return {offset, epoch, first_off, out}
"#;

/// The scripts and key names of the streams.
pub(super) struct Streams {
    prefix: String,
    size: usize,
    ttl_ms: u64,
    append: Script,
    recover: Script,
    /// `SPUBLISH` on a Redis Cluster, else `PUBLISH`.
    publish: &'static str,
}

impl Streams {
    pub(super) fn new(channel: &str, cfg: &HistoryConfig, cluster: bool) -> Streams {
        Streams {
            publish: if cluster { "SPUBLISH" } else { "PUBLISH" },
            prefix: format!("{channel}:stream:"),
            size: cfg.size,
            ttl_ms: (cfg.ttl.as_millis() as u64).max(1000),
            append: Script::new(APPEND),
            recover: Script::new(RECOVER),
        }
    }

    fn keys(&self, user: &str) -> (String, String) {
        let stream = format!("{}{{{user}}}", self.prefix);
        (format!("{stream}:meta"), stream)
    }

    /// Adds the script that places `envelope` (JSON `json`) in its stream
    /// and publishes it on `channel` to `pipe`.
    pub(super) fn append_to(
        &self,
        pipe: &mut redis::Pipeline,
        user: &str,
        channel: &str,
        json: &[u8],
    ) {
        pipe.invoke_script(&self.append_invocation(user, channel, json))
            .ignore();
    }

    /// The script call that places `json` in `user`'s stream and publishes
    /// it on `channel`.
    pub(super) fn append_invocation<'a>(
        &'a self,
        user: &str,
        channel: &str,
        json: &[u8],
    ) -> redis::ScriptInvocation<'a> {
        let (meta, stream) = self.keys(user);
        let mut invocation = self.append.prepare_invoke();
        invocation
            .key(meta)
            .key(stream)
            .arg(new_epoch())
            .arg(self.size)
            .arg(self.ttl_ms)
            .arg(channel)
            .arg(json)
            .arg(self.publish);
        invocation
    }

    /// The command that publishes a control notice on `channel`.
    pub(super) fn publish_cmd(&self, channel: &str, json: &[u8]) -> redis::Cmd {
        let mut cmd = redis::cmd(self.publish);
        cmd.arg(channel).arg(json);
        cmd
    }

    /// Loads the append script (a pipeline cannot load it on demand).
    pub(super) fn load_append(&self, pipe: &mut redis::Pipeline) {
        pipe.load_script(&self.append).ignore();
    }

    /// Where `user`'s stream stands and what a client at `since` missed.
    pub(super) async fn recover(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
        user: &str,
        since: Option<(u64, String)>,
    ) -> redis::RedisResult<Recovery> {
        let (meta, stream) = self.keys(user);
        let (client_offset, client_epoch) = match &since {
            Some((o, e)) => (*o as i64, e.clone()),
            None => (-1, String::new()),
        };
        let (offset, epoch, first_kept, raw): (u64, String, u64, Vec<Vec<u8>>) = self
            .recover
            .key(meta)
            .key(stream)
            .arg(new_epoch())
            .arg(self.ttl_ms)
            .arg(client_offset)
            .arg(client_epoch)
            .invoke_async(conn)
            .await?;
        let events: Vec<Arc<Envelope>> = raw
            .iter()
            .filter_map(|b| Envelope::decode(b))
            .map(Arc::new)
            .collect();
        Ok(Recovery::compute(
            offset,
            &epoch,
            (first_kept > 0).then_some(first_kept),
            since.as_ref().map(|(o, e)| (*o, e.as_str())),
            |_| events,
        ))
    }
}

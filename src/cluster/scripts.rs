//! The Lua scripts the cluster runs on Redis. Each changes shared state and
//! publishes what the change means in one atomic step, so that two nodes
//! can never both announce a user online, and a node's sweep of a dead one
//! happens once. Run with `EVAL` (the text each time): nothing to reload
//! after Redis restarts, and Redis caches the compiled script by its hash.
//!
//! Keys are built inside the scripts from the prefix in `ARGV`: shardcast
//! runs on one Redis (or a Sentinel-managed primary), not Redis Cluster.

/// Sets this node's member count of a room (0 removes it) and, if given,
/// publishes the join's or leave's announcement in the same step (so its
/// place on the room's channel is the change's place among every node's).
/// KEYS: room hash, rooms set, node-rooms set. ARGV: node, room, count
/// [, channel, message]. Returns the room's members over every node.
pub const ROOM_COUNT: &str = r#"
local count = tonumber(ARGV[3])
if count > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], count)
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('SADD', KEYS[3], ARGV[2])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[2])
  if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
end
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
if ARGV[5] then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return total
"#;

/// A user has sockets on this node. Publishes `presence` (online) if no
/// node had any. KEYS: user hash, users set, node-users set.
/// ARGV: node, user, all channel, presence message. Returns 1 if published.
pub const USER_ONLINE: &str = r#"
local added = redis.call('HSET', KEYS[1], ARGV[1], 1)
redis.call('SADD', KEYS[3], ARGV[2])
if added == 1 and redis.call('HLEN', KEYS[1]) == 1 then
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 1
end
return 0
"#;

/// A user has no socket left on this node. Publishes `presence` (offline)
/// if no node has any. Same KEYS and ARGV as [`USER_ONLINE`].
pub const USER_OFFLINE: &str = r#"
redis.call('SREM', KEYS[3], ARGV[2])
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 and redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[2])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 1
end
return 0
"#;

/// Publishes a message to the node channel of every other node where the
/// user has sockets. KEYS: user hash. ARGV: node, node channel prefix,
/// message. Returns the nodes it was published for.
pub const TO_USER_NODES: &str = r#"
local nodes = {}
for _, node in ipairs(redis.call('HKEYS', KEYS[1])) do
  if node ~= ARGV[1] then
    redis.call('PUBLISH', ARGV[2] .. node, ARGV[3])
    table.insert(nodes, node)
  end
end
return nodes
"#;

/// Publishes a room broadcast and returns the other nodes with members of
/// the room (those that will count it). KEYS: room hash.
/// ARGV: node, channel, message.
pub const TO_ROOM_COUNTED: &str = r#"
redis.call('PUBLISH', ARGV[2], ARGV[3])
local nodes = {}
for _, node in ipairs(redis.call('HKEYS', KEYS[1])) do
  if node ~= ARGV[1] then table.insert(nodes, node) end
end
return nodes
"#;

/// Publishes to the node whose socket ids carry a tag (the tags hash maps
/// tags to node names). KEYS: tags hash. ARGV: tag, node channel prefix,
/// message. Returns the node's name, or nil if no live node has the tag.
pub const TO_SOCKET_NODE: &str = r#"
local node = redis.call('HGET', KEYS[1], ARGV[1])
if not node then return false end
redis.call('PUBLISH', ARGV[2] .. node, ARGV[3])
return node
"#;

/// The heartbeat: refreshes this node's key and its entry in the tags hash,
/// sweeps nodes whose key has expired (their users go offline — `presence`
/// published — their room counts and tags go), and lists the live nodes.
///
/// A node whose key is missing is swept only once it has stayed missing for
/// `grace` (by Redis's clock), and never by a node that found its own key
/// missing: after Redis stalled longer than the TTL every key has expired
/// at once, and the nodes must get a beat in to re-register before anyone
/// is declared dead (their users would be announced offline, then online).
///
/// KEYS: this node's key, nodes set, tags hash, suspects hash. ARGV: node,
/// TTL in ms, prefix, all channel, now in ms, this node's tag, grace in ms.
/// Returns `{fresh, live node...}`; `fresh` = 1 when this node's key was
/// missing (first beat, Redis restarted or stalled, or swept).
pub const HEARTBEAT: &str = r#"
local fresh = redis.call('EXISTS', KEYS[1]) == 0
redis.call('SET', KEYS[1], ARGV[6], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[6], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local prefix = ARGV[3]
local live = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local missing_since = nil
  if redis.call('EXISTS', prefix .. ':node:' .. node) == 1 then
    table.insert(live, node)
    redis.call('HDEL', KEYS[4], node)
  elseif not fresh then
    missing_since = redis.call('HGET', KEYS[4], node)
    if not missing_since then redis.call('HSET', KEYS[4], node, now) end
  end
  if missing_since and now - tonumber(missing_since) >= tonumber(ARGV[7]) then
    redis.call('HDEL', KEYS[4], node)
    local users_key = prefix .. ':node-users:' .. node
    for _, user in ipairs(redis.call('SMEMBERS', users_key)) do
      local user_key = prefix .. ':user:' .. user
      if redis.call('HDEL', user_key, node) == 1 and redis.call('HLEN', user_key) == 0 then
        redis.call('SREM', prefix .. ':users', user)
        redis.call('PUBLISH', ARGV[4], cjson.encode({k = 'presence', o = node, ts = tonumber(ARGV[5]), user = user, online = false}))
      end
    end
    local rooms_key = prefix .. ':node-rooms:' .. node
    for _, room in ipairs(redis.call('SMEMBERS', rooms_key)) do
      local room_key = prefix .. ':room:' .. room
      redis.call('HDEL', room_key, node)
      if redis.call('HLEN', room_key) == 0 then redis.call('SREM', prefix .. ':rooms', room) end
    end
    redis.call('DEL', users_key, rooms_key)
    redis.call('SREM', KEYS[2], node)
    local tags = redis.call('HGETALL', KEYS[3])
    for i = 1, #tags, 2 do
      if tags[i + 1] == node then redis.call('HDEL', KEYS[3], tags[i]) end
    end
  end
end
table.insert(live, 1, fresh and 1 or 0)
return live
"#;

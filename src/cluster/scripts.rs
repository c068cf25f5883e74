//! The Lua scripts the cluster runs on Redis. Each changes shared state and
//! publishes what the change means in one atomic step, so that two nodes
//! can never both announce a user online, and a node's sweep of a dead one
//! happens once. Run with `EVAL` (the text each time): nothing to reload
//! after Redis restarts, and Redis caches the compiled script by its hash.
//!
//! Keys are built inside the scripts from the prefix in `ARGV`: shardcast
//! runs on one Redis (or a Sentinel-managed primary), not Redis Cluster.

/// Sets this node's member count of a room (0 removes it).
/// KEYS: room hash, rooms set, node-rooms set. ARGV: node, room, count.
/// Returns the room's members over every node.
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

/// The heartbeat: refreshes this node's key, sweeps nodes whose key has
/// expired (their users go offline — `presence` published — and their room
/// counts go), and lists the live nodes.
/// KEYS: this node's key, nodes set. ARGV: node, TTL in ms, prefix, all
/// channel, now in ms. Returns `{fresh, live node...}`; `fresh` = 1 when
/// this node's key was missing (first beat, Redis restarted, or swept).
pub const HEARTBEAT: &str = r#"
local fresh = redis.call('EXISTS', KEYS[1]) == 0
redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
local prefix = ARGV[3]
local live = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', prefix .. ':node:' .. node) == 1 then
    table.insert(live, node)
  else
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
  end
end
table.insert(live, 1, fresh and 1 or 0)
return live
"#;

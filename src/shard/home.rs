//! Home records: for every room and user name that hashes to this shard
//! ([`super::Router::home_of`]), the process-wide truth about it — a room's
//! member count, users and times; on which shards a user has sockets. Plain
//! tables with no I/O: the shard applies to them the messages other shards
//! send (`RoomJoined`, `RoomLeft`, `UserAttached`, `UserDetached`) and asks
//! them who to deliver to and what to answer.

use std::sync::Arc;
use std::time::SystemTime;

use super::messages::RoomInfo;
use super::Map;

struct HomeRoom {
    members: u32,
    created_at: SystemTime,
    last_activity: SystemTime,
    /// Sockets per user in the room.
    users: Map<Arc<str>, u32>,
}

#[derive(Default)]
struct HomeUser {
    /// Sockets per shard, for the shards that have any.
    shards: Vec<(usize, u32)>,
}

#[derive(Default)]
pub(super) struct HomeTables {
    rooms: Map<Arc<str>, HomeRoom>,
    users: Map<Arc<str>, HomeUser>,
}

impl HomeTables {
    /// Counts a socket (of `user`, empty if none) into `room`, creating the
    /// room on its first member; returns the member count after.
    pub fn room_joined(&mut self, room: &Arc<str>, user: &Arc<str>, now: SystemTime) -> u32 {
        let home = self.rooms.entry(room.clone()).or_insert_with(|| HomeRoom {
            members: 0,
            created_at: now,
            last_activity: now,
            users: Map::default(),
        });
        home.members += 1;
        home.last_activity = now;
        if !user.is_empty() {
            *home.users.entry(user.clone()).or_default() += 1;
        }
        home.members
    }

    /// Counts a socket out of `room`; the room goes with its last member.
    pub fn room_left(&mut self, room: &str, user: &str, now: SystemTime) {
        let Some(home) = self.rooms.get_mut(room) else { return };
        home.members = home.members.saturating_sub(1);
        home.last_activity = now;
        if let Some(n) = home.users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                home.users.remove(user);
            }
        }
        if home.members == 0 {
            self.rooms.remove(room);
        }
    }

    /// Something was delivered to `room`.
    pub fn touch_room(&mut self, room: &str, now: SystemTime) {
        if let Some(home) = self.rooms.get_mut(room) {
            home.last_activity = now;
        }
    }

    pub fn room_size(&self, room: &str) -> u32 {
        self.rooms.get(room).map_or(0, |r| r.members)
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn rooms(&self) -> Vec<RoomInfo> {
        self.rooms
            .iter()
            .map(|(name, room)| RoomInfo {
                name: name.to_string(),
                member_count: room.members,
                users: room.users.keys().map(|u| u.to_string()).collect(),
                created_at: room.created_at,
                last_activity: room.last_activity,
            })
            .collect()
    }

    /// Counts one more socket of `user` on `shard`; `true` if it is the
    /// user's first anywhere (the user comes online).
    pub fn user_attached(&mut self, user: &Arc<str>, shard: usize) -> bool {
        let home = self.users.entry(user.clone()).or_default();
        let first = home.shards.is_empty();
        match home.shards.iter_mut().find(|(s, _)| *s == shard) {
            Some((_, n)) => *n += 1,
            None => home.shards.push((shard, 1)),
        }
        first
    }

    /// Counts one socket of `user` on `shard` out; `true` if it was the
    /// user's last (the user goes offline).
    pub fn user_detached(&mut self, user: &str, shard: usize) -> bool {
        let Some(home) = self.users.get_mut(user) else { return false };
        if let Some(i) = home.shards.iter().position(|(s, _)| *s == shard) {
            home.shards[i].1 -= 1;
            if home.shards[i].1 == 0 {
                home.shards.swap_remove(i);
            }
        }
        let last = home.shards.is_empty();
        if last {
            self.users.remove(user);
        }
        last
    }

    /// The shards where `user` has sockets (empty: offline).
    pub fn user_shards(&self, user: &str) -> Vec<usize> {
        self.users.get(user).map_or(Vec::new(), |home| home.shards.iter().map(|(s, _)| *s).collect())
    }

    pub fn is_online(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    pub fn online_count(&self) -> usize {
        self.users.len()
    }

    /// Entries held, table by table (the `shardcast_table_entries` gauge):
    /// all back to 0 once every client is gone, or something leaked.
    pub fn entries(&self) -> [(&'static str, usize); 4] {
        [
            ("home_rooms", self.rooms.len()),
            ("home_room_users", self.rooms.values().map(|r| r.users.len()).sum()),
            ("home_users", self.users.len()),
            ("home_user_shards", self.users.values().map(|u| u.shards.len()).sum()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_count_sockets_and_users_and_go_with_their_last_member() {
        let mut home = HomeTables::default();
        let (room, ann, bob) = (Arc::from("r"), Arc::from("ann"), Arc::from("bob"));
        let now = SystemTime::now();
        assert_eq!(home.room_joined(&room, &ann, now), 1);
        assert_eq!(home.room_joined(&room, &ann, now), 2, "a user's second socket counts");
        assert_eq!(home.room_joined(&room, &bob, now), 3);
        assert_eq!(home.rooms()[0].users.len(), 2);
        home.room_left("r", "ann", now);
        assert_eq!((home.room_size("r"), home.rooms()[0].users.len()), (2, 2));
        home.room_left("r", "ann", now);
        assert_eq!(home.rooms()[0].users, vec!["bob".to_string()]);
        home.room_left("r", "bob", now);
        assert_eq!((home.room_size("r"), home.room_count()), (0, 0));
        home.room_left("r", "bob", now);
        assert_eq!(home.room_count(), 0, "a late leave of a gone room changes nothing");
    }

    #[test]
    fn a_user_is_online_from_the_first_socket_to_the_last_on_any_shard() {
        let mut home = HomeTables::default();
        let ann: Arc<str> = Arc::from("ann");
        assert!(home.user_attached(&ann, 0), "first socket: comes online");
        assert!(!home.user_attached(&ann, 2));
        assert!(!home.user_attached(&ann, 2));
        let mut shards = home.user_shards("ann");
        shards.sort();
        assert_eq!(shards, vec![0, 2]);
        assert!(!home.user_detached("ann", 0));
        assert!(!home.user_detached("ann", 2));
        assert_eq!(home.user_shards("ann"), vec![2]);
        assert!(home.user_detached("ann", 2), "last socket: goes offline");
        assert!(!home.is_online("ann"));
        assert!(!home.user_detached("ann", 2), "nothing left to go offline");
    }
}

//! What the in-process tests share.

use std::num::NonZeroUsize;

use shardcast::Config;

/// A broker on a free loopback port with 2 shards, development auth and no
/// API key, whatever the environment of the test run says.
pub fn loopback_config() -> Config {
    let mut config = Config::defaults();
    config.port = 0;
    config.host = "127.0.0.1".into();
    config.shards = NonZeroUsize::new(2);
    config.jwt_secret = None;
    config.api_key = None;
    config
}

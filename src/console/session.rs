//! The console's sessions: an admin token, presented once at sign-in, becomes a random
//! session id in an HttpOnly cookie. The server keeps the sessions (in memory: a restart
//! signs everyone out), each with its admin, its CSRF token and its two expiries.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AdminRole;

/// At most this many sessions at once; signing in beyond it ends the least recently used.
pub const MAX_SESSIONS: usize = 10_000;

/// A signed-in admin.
#[derive(Debug, Clone)]
pub struct Session {
    /// The admin token's name (`[admin.tokens.NAME]`), never the token.
    pub admin: String,
    pub role: AdminRole,
    /// Every state-changing form carries it.
    pub csrf: String,
    pub created: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

impl Session {
    pub fn may_act(&self) -> bool {
        self.role >= AdminRole::Operator
    }

    /// Whether `presented` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        !presented.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }
}

pub struct Sessions {
    /// Keyed by the SHA-256 of the session id: the ids themselves are only in the cookies.
    by_id: Mutex<HashMap<String, Session>>,
    idle: Duration,
    absolute: Duration,
}

/// 32 random bytes from the operating system, hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn key(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

impl Sessions {
    pub fn new(idle: Duration, absolute: Duration) -> Sessions {
        Sessions {
            by_id: Mutex::new(HashMap::new()),
            idle,
            absolute,
        }
    }

    fn expired(&self, s: &Session, now: DateTime<Utc>) -> bool {
        now - s.last_seen >= self.idle || now - s.created >= self.absolute
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        match self.by_id.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A new session for `admin`; answers its id (for the cookie) and the session.
    pub fn create(&self, admin: &str, role: AdminRole, now: DateTime<Utc>) -> (String, Session) {
        let id = random_token();
        let session = Session {
            admin: admin.to_string(),
            role,
            csrf: random_token(),
            created: now,
            last_seen: now,
        };
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| !self.expired(s, now));
        }
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(key(&id), session.clone());
        (id, session)
    }

    /// The live session of cookie value `id`, its idle clock restarted; an expired one is
    /// ended.
    pub fn touch(&self, id: &str, now: DateTime<Utc>) -> Option<Session> {
        let k = key(id);
        let mut map = self.lock();
        let live = map.get(&k).is_some_and(|s| !self.expired(s, now));
        if !live {
            map.remove(&k);
            return None;
        }
        let s = map.get_mut(&k)?;
        s.last_seen = now;
        Some(s.clone())
    }

    /// Sign-out.
    pub fn end(&self, id: &str) {
        self.lock().remove(&key(id));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    #[test]
    fn a_session_ends_when_idle_or_old() {
        let s = Sessions::new(Duration::minutes(30), Duration::hours(8));
        let (id, _) = s.create("ops", AdminRole::Operator, t0());
        assert_eq!(id.len(), 64);
        assert!(s.touch(&id, t0() + Duration::minutes(29)).is_some());
        // Each request restarts the idle clock …
        let mut now = t0();
        for _ in 0..16 {
            now += Duration::minutes(29);
            assert!(s.touch(&id, now).is_some());
        }
        // … but not the absolute one (16 × 29 min < 8 h; one more step passes it).
        now += Duration::minutes(29);
        assert!(s.touch(&id, now).is_none());
        assert!(s.is_empty());

        let (id, _) = s.create("ops", AdminRole::Operator, t0());
        assert!(s.touch(&id, t0() + Duration::minutes(30)).is_none());
        assert!(s.touch("not-a-session", t0()).is_none());
    }

    #[test]
    fn sign_out_ends_the_session_and_ids_are_not_stored() {
        let s = Sessions::new(Duration::minutes(30), Duration::hours(8));
        let (id, session) = s.create("audit", AdminRole::Reader, t0());
        assert!(!session.may_act());
        assert!(!s.lock().contains_key(&id));
        s.end(&id);
        assert!(s.touch(&id, t0()).is_none());
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let s = Sessions::new(Duration::minutes(30), Duration::hours(8));
        let (_, session) = s.create("ops", AdminRole::Operator, t0());
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches(&session.csrf[1..]));
        let (_, other) = s.create("ops", AdminRole::Operator, t0());
        assert!(!session.csrf_matches(&other.csrf));
    }
}

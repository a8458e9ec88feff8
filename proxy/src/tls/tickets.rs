//! The client side's TLS 1.3 session tickets, banked deeper than rustls' own cache.
//!
//! A TLS 1.3 ticket is used once (RFC 8446, C.4; rustls' `ClientSessionStore` contract), and
//! each full or resumed handshake with a mast-proxy or Envoy server brings two new ones. rustls'
//! `ClientSessionMemoryCache` keeps at most 8 per server name, so a sidecar opening many
//! connections to one destination at once (a `maxRequestsPerConnection: 1` DestinationRule,
//! a pool filling up under load) runs dry: with 32 concurrent requests, 44% of the
//! handshakes were full ones — two ECDSA verifications and a signature on each side —
//! although a ticket would have been on its way. This store keeps up to
//! [`TICKETS_PER_SERVER`] per server name, for at most [`SERVERS`] names (the oldest name is
//! dropped first); key-exchange hints and TLS 1.2 sessions stay in rustls' cache. A ticket
//! is about 1 KiB (the ticket itself, which carries our certificate, and its secret; the
//! server's chain is shared), so one busy destination holds at most ~32 KiB.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;

use rustls::NamedGroup;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;

/// Tickets kept per server name (rustls keeps 8).
pub const TICKETS_PER_SERVER: usize = 32;
/// Server names with tickets (Istio's SNI names one per destination cluster and port).
pub const SERVERS: usize = 256;

/// A [`ClientSessionStore`] with a deeper TLS 1.3 ticket queue per server.
pub struct TicketBank {
    /// Key-exchange hints and TLS 1.2 sessions.
    other: ClientSessionMemoryCache,
    tls13: Mutex<Tickets>,
}

#[derive(Default)]
struct Tickets {
    by_server: HashMap<ServerName<'static>, VecDeque<Tls13ClientSessionValue>>,
    /// Server names in the order they were first banked, for eviction.
    order: VecDeque<ServerName<'static>>,
}

impl TicketBank {
    pub fn new() -> Self {
        Self {
            other: ClientSessionMemoryCache::new(SERVERS),
            tls13: Mutex::new(Tickets::default()),
        }
    }

    /// Tickets banked for `server` (tests).
    #[cfg(test)]
    pub fn banked(&self, server: &ServerName<'_>) -> usize {
        let t = self.tls13.lock().unwrap_or_else(|e| e.into_inner());
        t.by_server.get(&server.to_owned()).map_or(0, VecDeque::len)
    }
}

impl Default for TicketBank {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TicketBank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The tickets and their secrets are not printed.
        f.debug_struct("TicketBank").finish_non_exhaustive()
    }
}

impl ClientSessionStore for TicketBank {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.other.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.other.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.other.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.other.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.other.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let mut t = self.tls13.lock().unwrap_or_else(|e| e.into_inner());
        let Tickets { by_server, order } = &mut *t;
        if !by_server.contains_key(&server_name) {
            if by_server.len() >= SERVERS
                && let Some(oldest) = order.pop_front()
            {
                by_server.remove(&oldest);
            }
            order.push_back(server_name.clone());
        }
        let queue = by_server.entry(server_name).or_default();
        if queue.len() >= TICKETS_PER_SERVER {
            queue.pop_front();
        }
        queue.push_back(value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        // Newest first, as rustls' cache: it has the most lifetime left.
        let mut t = self.tls13.lock().unwrap_or_else(|e| e.into_inner());
        t.by_server.get_mut(server_name)?.pop_back()
    }
}

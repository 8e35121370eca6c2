//! The receive loop shared by the apply worker and a table synchronization worker's catch-up:
//! take what the socket has, decode each XLogData with the pgoutput decoder and hand it to the
//! applier (one arm per message kind), buffer streamed transactions, answer keepalives, report
//! progress to the publisher and to shared memory, and sleep on the latch and the socket
//! together so that SIGTERM, SIGHUP and postmaster death are handled within a second.
//!
//! In the apply worker the loop also runs the table-synchronization step between transactions
//! (`syncing.rs`); in a sync worker it stops where its catch-up ends (`catchup_end`).
use super::apply::Applier;
use super::progress::Progress;
use super::{errctx, execute, hold, parallel, report_stats, seqsync, stream, syncing, walend};
use crate::catalog::Subscription;
use crate::process::{now, reload_config_if_requested, shutdown_requested, SocketWait};
use crate::shmem::Status;
use crate::{gucs, publisher, report};
use pgrx::prelude::*;
use pgsub_proto::client::{Client, Error as ProtoError, PgOutputOptions};
use pgsub_proto::frame::ReplicationFrame;
use pgsub_proto::pgoutput::{self, Begin, Commit, Decoder, LogicalMessage};
use pgsub_proto::Lsn;
use std::time::{Duration, Instant};

/// What a failed read of the stream is, unless the walsender reported an error (`fail`).
const LOST_CONNECTION: &str = "lost the replication connection to the publisher";

type Code = PgSqlErrorCode;

pub(super) struct Stream {
    pub(super) sub: Subscription,
    pub(super) client: Client,
    pub(super) decoder: Decoder,
    pub(super) proto_version: u32,
    pub(super) streams: stream::Streams,
    pub(super) origin_none: bool,
    pub(super) applier: Applier,
    pub(super) progress: Progress,
    pub(super) last_recv: Instant,
    pub(super) ping_sent: bool,
    /// A status update asked the walsender for a reply and no keepalive came since: the next one
    /// answers it (`Progress::on_keepalive`).
    reply_asked: bool,
    /// Asked the walsender whether it has anything more since data last came (`ask_if_idle`).
    idle_asked: bool,
    pub(super) status: Status,
    /// When table statistics were last flushed by force (idle).
    pub(super) stats_forced_at: Instant,
    /// In a sync worker: where its catch-up ends (transactions finishing at or after it belong
    /// to the apply worker); None in the apply worker.
    pub(super) catchup_end: Option<Lsn>,
    /// The sync worker's catch-up reached `catchup_end`.
    pub(super) caught_up: bool,
    /// In a sync worker: its table (the catch-up is given up when the apply worker that set
    /// `catchup_end` is gone, `syncworker::answering_apply_worker_gone`).
    pub(super) sync_relid: Option<u32>,
    /// The apply worker's side of table synchronization.
    pub(super) syncing: syncing::Syncing,
    /// The apply worker's side of a hold for `pgsub.verify_subscription` (`hold.rs`).
    pub(super) hold: hold::Holder,
    /// Periodic sequence sync (`seqsync.rs`).
    pub(super) seqsync: seqsync::SeqSync,
    /// Parallel apply workers (`streaming => 'parallel'`, `parallel/`).
    pub(super) parallel: Option<parallel::Pool>,
    /// Commits up to this position are not grouped (`may_defer_commit`).
    pub(super) ungrouped_until: u64,
    /// The latch + socket wait of `wait`, built at the first one.
    waiter: Option<SocketWait>,
    /// The socket wakes this worker only once `pgsub.receive_batch` is queued (`set_batching`).
    batching: bool,
    /// The publisher's WAL end read while changes keep arriving (`walend.rs`).
    wal_end_probe: walend::WalEndProbe,
}

impl Stream {
    pub(super) fn new(
        sub: Subscription,
        client: Client,
        opts: &PgOutputOptions,
        applier: Applier,
        progress: Progress,
        catchup_end: Option<Lsn>,
    ) -> Stream {
        let subid = sub.subid;
        Stream {
            origin_none: sub.origin == "none",
            sub,
            client,
            decoder: Decoder::new(opts.proto_version),
            proto_version: opts.proto_version,
            streams: stream::Streams::new(subid),
            applier,
            progress,
            last_recv: Instant::now(),
            ping_sent: false,
            reply_asked: false,
            idle_asked: false,
            status: Status::Catchup,
            stats_forced_at: Instant::now(),
            catchup_end,
            caught_up: false,
            sync_relid: None,
            syncing: syncing::Syncing::default(),
            hold: hold::Holder::default(),
            seqsync: seqsync::SeqSync::default(),
            parallel: None,
            ungrouped_until: crate::shmem::with_slot(subid, |s| s.ungrouped_until).unwrap_or(0),
            waiter: None,
            batching: false,
            wal_end_probe: walend::WalEndProbe::default(),
        }
    }

    /// In a sync worker, whether its catch-up is to be given up: the apply worker whose position
    /// is its end has exited (`syncworker::answering_apply_worker_gone`). `caught_up` stays
    /// false: the worker ends without SYNCDONE and is started again.
    fn catchup_abandoned(&self) -> bool {
        !self.applier.open()
            && self
                .sync_relid
                .is_some_and(|relid| super::syncworker::answering_apply_worker_gone(self.sub.subid, relid))
    }

    /// In a sync worker, whether the catch-up is over at `position` (the next transaction's
    /// finish LSN, a commit's end, or an idle keepalive's WAL end).
    fn reached_catchup_end(&mut self, position: Lsn) -> bool {
        if let Some(end) = self.catchup_end {
            if pgsub_core::state::catchup_done(position.0, end.0) {
                self.caught_up = true;
            }
        }
        self.caught_up
    }

    pub(super) fn run(&mut self) {
        self.read_and_apply();
        // The connection goes on after the stream (a sync worker ends its catch-up on it and
        // queries): waiters wake at the first byte again (`set_batching`).
        self.set_batching(0);
    }

    fn read_and_apply(&mut self) {
        loop {
            if shutdown_requested() {
                self.stop();
                return;
            }
            if self.caught_up || self.catchup_abandoned() {
                return;
            }
            reload_config_if_requested();
            // Take what the socket has, applying as we go; look at signals now and then.
            let mut n = 0u32;
            let mut got_any = false;
            let mut round_bytes = 0usize;
            loop {
                let frame = match self.client.recv_frame() {
                    Ok(f) => f,
                    Err(e) => self.fail(&e, LOST_CONNECTION),
                };
                let Some(frame) = frame else { break };
                got_any = true;
                if let ReplicationFrame::XLogData { data, .. } = &frame {
                    round_bytes += data.len();
                }
                self.handle_frame(frame);
                // Renames of the subscription's tables found in a transaction, once it is over.
                self.applier.write_names();
                if self.caught_up {
                    return;
                }
                // Between transactions of a stream that never pauses: table synchronization goes
                // on (workers started, handshakes answered), as native's does at every commit.
                if self.catchup_end.is_none() && !self.applier.open() && self.sync_step_due() {
                    self.process_syncing_tables();
                    // The last table synchronized while the stream never paused: no longer
                    // initial_copy but streaming (behind, as lag_bytes and apply_lag show;
                    // wait_for_catchup reads the positions of a streaming worker).
                    if self.status == Status::InitialCopy && !self.applier.tables.any_syncing() {
                        self.status = Status::Streaming;
                        self.progress.publish(Some(Status::Streaming), now());
                    }
                }
                if self.catchup_end.is_none() && !self.applier.open() {
                    let at = self.progress.last_commit_time;
                    if let Some(end) = self.wal_end_probe.poll(&self.sub, round_bytes > 0, at) {
                        self.progress.on_publisher_end(end);
                    }
                }
                if self.progress.publish_due() {
                    // A steady stream never empties the socket: counters (and so the rates) still
                    // reach shared memory twice a second.
                    self.progress.publish(None, now());
                }
                n += 1;
                if n.is_multiple_of(1000) {
                    self.keep_publisher_alive();
                    if shutdown_requested() || self.catchup_abandoned() {
                        break;
                    }
                }
            }
            // The socket is empty: what was grouped commits now, and what was committed is
            // made durable so that the status update below can confirm it — unless the stream
            // is in full flow (a flush per pause would cost more than it shows; the WAL writer's
            // flushes are confirmed meanwhile, and the round after the stream slows flushes).
            self.set_batching(round_bytes);
            self.report_publisher_notices();
            self.finish_group();
            if gucs::FLUSH_WHEN_IDLE.get() && !self.batching {
                self.progress.flush_applied();
            }
            if let Some(p) = self.parallel.as_mut() {
                p.check();
            }
            if got_any {
                self.last_recv = Instant::now();
                self.ping_sent = false;
            }
            if self.catchup_end.is_none() && !self.applier.open() {
                let at = self.progress.last_commit_time;
                if let Some(end) = self.wal_end_probe.poll(&self.sub, round_bytes > 0, at) {
                    self.progress.on_publisher_end(end);
                }
            }
            let receipt = if got_any { now() } else { 0 };
            if !self.applier.open() && self.catchup_end.is_none() {
                self.progress.mark_caught_up();
                self.ask_if_idle();
                // While tables are being synchronized the subscription shows initial_copy.
                let st = if self.applier.tables.any_syncing() { Status::InitialCopy } else { Status::Streaming };
                if self.status != st {
                    self.status = st;
                    self.progress.publish(Some(st), receipt);
                }
                self.process_syncing_tables();
                if self.sub.two_phase && !self.sub.two_phase_enabled && self.applier.tables.all_ready() {
                    // Native's words: the stream starts again asking for prepared transactions.
                    log!(
                        "pgsub apply worker for subscription \"{}\" will restart so that two_phase can be enabled",
                        self.sub.name
                    );
                    self.stop();
                    crate::shmem::wake_launcher(crate::shmem::my_database());
                    return;
                }
                self.hold_when_idle();
                self.sync_sequences_if_due();
            }
            self.progress.publish(None, receipt);
            if !self.applier.open() {
                // Table statistics go to shared memory at most once a second while transactions
                // come (pending counts are kept meanwhile). An unforced flush measures that second
                // with the last commit's timestamp, which stands still while the publisher is
                // silent: then a forced one, at most once a second (it waits for the shared
                // entries' locks, which a forced flush on every idle wake would hit often).
                let idle_flush = !got_any && self.stats_forced_at.elapsed() >= Duration::from_secs(1);
                if idle_flush {
                    self.stats_forced_at = Instant::now();
                }
                report_stats(idle_flush);
            }
            self.send_feedback(false, false);
            self.check_timeout();
            self.wait();
        }
    }

    fn handle_frame(&mut self, frame: ReplicationFrame) {
        match frame {
            ReplicationFrame::XLogData { wal_start, wal_end, send_time, data } => {
                self.idle_asked = false;
                // The CopyData payload: its kind byte, three 8-byte fields, the message.
                self.progress.counters.bytes_received += 25 + data.len() as i64;
                self.progress.on_frame(wal_start, wal_end, send_time);
                let raw = data.clone();
                let msg = match self.decoder.decode(data) {
                    Ok(m) => m,
                    Err(e) => report::error(
                        Code::ERRCODE_PROTOCOL_VIOLATION,
                        format!("invalid logical replication message from the publisher: {e}"),
                        Some(format!("At WAL position {wal_start}.")),
                        None,
                    ),
                };
                // A group of deferred commits goes on only into the next BEGIN.
                if self.applier.group.is_some() && !matches!(msg, LogicalMessage::Begin(_)) {
                    self.finish_group();
                }
                if self.parallel.is_some() && self.route_parallel(&msg, &raw) {
                    return;
                }
                if self.decoder.in_stream() {
                    self.buffer_streamed(msg, &raw);
                } else {
                    self.apply(msg);
                }
            }
            ReplicationFrame::Keepalive { wal_end, send_time, reply_requested } => {
                self.finish_group();
                self.progress.counters.bytes_received += 18;
                self.progress.on_frame(Lsn::INVALID, wal_end, send_time);
                if !self.applier.in_txn {
                    let unasked = !reply_requested && !std::mem::take(&mut self.reply_asked);
                    self.progress.on_keepalive(wal_end, unasked);
                    if self.reached_catchup_end(wal_end) {
                        return;
                    }
                    self.hold.saw(wal_end);
                    self.applier.caught_up_to(wal_end);
                }
                if reply_requested {
                    self.send_feedback(true, false);
                }
            }
        }
    }

    /// With parallel apply: a streamed message of a transaction a parallel worker applies goes
    /// to it (true); anything else (false) takes the ordinary path. Relation descriptions are
    /// kept for the workers and still taken by the leader's applier too.
    fn route_parallel(&mut self, msg: &LogicalMessage, raw: &bytes::Bytes) -> bool {
        // Decided at a transaction's first Stream Start only: not per message (it looks at every
        // table's state).
        let eligible = matches!(msg, LogicalMessage::StreamStart(_)) && self.parallel_eligible();
        let in_stream = self.decoder.in_stream();
        let Some(pool) = self.parallel.as_mut() else { return false };
        match msg {
            LogicalMessage::StreamStart(s) => pool.start_block(s.xid, s.first_segment, eligible, raw),
            LogicalMessage::Relation(r) => {
                // One of a buffered streamed transaction holds only inside it (`stream.rs`).
                if !in_stream || pool.forwarding().is_some() {
                    pool.relation(r.oid, in_stream, raw);
                }
                if pool.forwarding().is_some() {
                    pool.forward(in_stream, raw);
                }
                false
            }
            LogicalMessage::StreamStop if pool.forwarding().is_some() => {
                pool.end_block(raw);
                true
            }
            LogicalMessage::StreamAbort(a) => pool.abort(a, raw),
            LogicalMessage::StreamCommit(c) if pool.has(c.xid) => {
                self.hold_before(c.commit_lsn);
                self.hold.saw(c.end_lsn);
                self.progress.pending_commit_time = c.commit_time;
                let mut pool = self.parallel.take();
                let local_end = pool.as_mut().and_then(|p| p.commit(c, raw));
                self.parallel = pool;
                if let Some(local_end) = local_end {
                    self.progress.on_commit_elsewhere(c.end_lsn, local_end, c.commit_time);
                    self.progress.publish(None, now());
                }
                true
            }
            _ if in_stream && pool.forwarding().is_some() => {
                pool.forward(in_stream, raw);
                true
            }
            _ => false,
        }
    }

    /// Grouped commits: whether the COMMIT of the remote transaction at `commit_lsn` may be
    /// deferred, so that the transactions already waiting in the socket after it are applied in
    /// the same local transaction (one commit record and one transaction start instead of one
    /// each; the group commits when the socket is empty, at any message but a BEGIN, or after
    /// `pgsub.group_commit_time`). Not while tables synchronize (a table's state changes at a
    /// commit position), with skip_lsn, under the policies that compare commit times or with
    /// track_commit_timestamp (every row would carry the group's last commit time), in a sync
    /// worker, nor up to the transaction an earlier run failed on (`ungrouped_until`: the retry
    /// commits each transaction before it, as without grouping).
    fn may_defer_commit(&self, commit_lsn: Lsn) -> bool {
        let limit = gucs::ms(&gucs::GROUP_COMMIT_TIME_MS);
        if limit.is_zero() {
            return false;
        }
        let in_time = self.applier.group.as_ref().is_none_or(|g| g.started.elapsed() < limit);
        // SAFETY: reads a GUC variable.
        let commit_ts = unsafe { pg_sys::track_commit_timestamp };
        in_time
            && !commit_ts
            && self.catchup_end.is_none()
            && commit_lsn.0 > self.ungrouped_until
            && self.applier.skip_lsn.is_none()
            && !self.sub.conflict_resolution.needs_commit_timestamps()
            && !self.applier.tables.any_syncing()
    }

    /// Commits a group of deferred remote transactions (`may_defer_commit`) and shows it.
    pub(super) fn finish_group(&mut self) {
        if self.applier.group.is_some() {
            self.applier.finish_group(&mut self.progress);
            self.progress.publish(None, now());
        }
    }

    /// Whether a streamed transaction starting now may go to a parallel worker (`parallel/`
    /// says why not otherwise).
    fn parallel_eligible(&self) -> bool {
        let not_now = [
            self.catchup_end.is_some(),
            self.sub.two_phase,
            // last/first_update_wins compare the remote commit time, unknown before Stream Commit.
            self.sub.conflict_resolution.needs_commit_timestamps(),
            self.applier.skip_lsn.is_some(),
            self.applier.tables.any_syncing(),
            self.origin_none && self.client.server_version_num() < 160000,
        ];
        !not_now.contains(&true)
    }

    /// A message inside a Stream Start … Stop block: changes are buffered for their top-level
    /// transaction, and so are relation descriptions, which take effect when it is applied
    /// (`stream.rs`); a block forwarded to a parallel apply worker leaves only its relation
    /// descriptions here, taken at once as native's leader does (the publisher may not send
    /// them again after the transaction).
    fn buffer_streamed(&mut self, msg: LogicalMessage, raw: &[u8]) {
        let xid = match &msg {
            LogicalMessage::StreamStart(s) => {
                self.streams.start(s.xid);
                return;
            }
            LogicalMessage::Relation(r) => {
                if self.streams.in_block() {
                    self.streams.push_relation(raw);
                } else {
                    self.applier.on_relation(r.clone());
                }
                return;
            }
            LogicalMessage::Type(_) => return,
            LogicalMessage::Origin(_) => {
                if self.origin_none {
                    self.streams.mark_foreign();
                }
                return;
            }
            LogicalMessage::Insert(m) => m.xid,
            LogicalMessage::Update(m) => m.xid,
            LogicalMessage::Delete(m) => m.xid,
            LogicalMessage::Truncate(m) => m.xid,
            LogicalMessage::Message(m) => m.xid,
            other => report::error(
                Code::ERRCODE_PROTOCOL_VIOLATION,
                format!("unexpected message \"{}\" inside a stream block", other.kind()),
                None,
                None,
            ),
        };
        let Some(xid) = xid else {
            report::error(Code::ERRCODE_PROTOCOL_VIOLATION, "streamed change without a transaction id", None, None);
        };
        self.streams.push(xid, raw);
    }

    fn apply(&mut self, msg: LogicalMessage) {
        let p = &mut self.progress;
        match msg {
            LogicalMessage::Begin(b) => {
                if self.reached_catchup_end(b.final_lsn) {
                    return; // the apply worker's from here
                }
                self.hold_before(b.final_lsn);
                let p = &mut self.progress;
                self.applier.begin(b, p);
                if self.status == Status::Streaming {
                    // Show the pending transaction's commit time as apply lag while it applies.
                    p.publish(None, 0);
                }
            }
            LogicalMessage::Commit(c) => {
                let end = c.end_lsn;
                let defer = self.may_defer_commit(c.commit_lsn);
                let p = &mut self.progress;
                self.applier.commit(c, p, defer);
                // Counters and positions are visible as soon as the transaction is.
                p.publish(None, now());
                self.hold.saw(end);
                self.reached_catchup_end(end);
            }
            LogicalMessage::Origin(o) => self.applier.origin(&o.name),
            LogicalMessage::Relation(r) => self.applier.on_relation(r),
            LogicalMessage::Type(_) => {}
            LogicalMessage::Insert(_)
            | LogicalMessage::Update(_)
            | LogicalMessage::Delete(_)
            | LogicalMessage::Truncate(_)
            | LogicalMessage::Message(_) => self.apply_change(msg),
            LogicalMessage::StreamStop => self.streams.stop(),
            LogicalMessage::StreamAbort(a) => self.streams.abort(a.xid, a.subxid),
            LogicalMessage::StreamCommit(c) => {
                let begin = Begin { final_lsn: c.commit_lsn, commit_time: c.commit_time, xid: c.xid };
                let commit =
                    Commit { flags: c.flags, commit_lsn: c.commit_lsn, end_lsn: c.end_lsn, commit_time: c.commit_time };
                self.hold_before(c.commit_lsn);
                self.hold.saw(c.end_lsn);
                self.apply_streamed(c.xid, begin, false, |applier, p| {
                    applier.streamed = true;
                    applier.commit(commit, p, false)
                });
            }
            LogicalMessage::StreamPrepare(pr) => {
                let begin = Begin { final_lsn: pr.prepare_lsn, commit_time: pr.prepare_time, xid: pr.xid };
                self.apply_streamed(pr.xid, begin, true, |applier, p| {
                    applier.streamed = true;
                    applier.prepare(pr.xid, pr.end_lsn, pr.prepare_time, p)
                });
            }
            LogicalMessage::BeginPrepare(bp) => {
                let begin = Begin { final_lsn: bp.prepare_lsn, commit_time: bp.prepare_time, xid: bp.xid };
                self.applier.begin(begin, p);
                super::conflict::txn_is_prepared();
            }
            LogicalMessage::Prepare(pr) => {
                self.applier.prepare(pr.xid, pr.end_lsn, pr.prepare_time, p);
                p.publish(None, now());
            }
            LogicalMessage::CommitPrepared(c) => {
                self.hold_before(c.commit_lsn);
                self.hold.saw(c.end_lsn);
                let p = &mut self.progress;
                self.applier.finish_prepared(c.xid, true, c.commit_lsn, c.end_lsn, c.commit_time, p);
                p.publish(None, now());
            }
            LogicalMessage::RollbackPrepared(r) => {
                self.applier.finish_prepared(r.xid, false, r.rollback_end_lsn, r.rollback_end_lsn, r.rollback_time, p);
                p.publish(None, now());
            }
            LogicalMessage::StreamStart(_) => report::error(
                Code::ERRCODE_PROTOCOL_VIOLATION,
                "STREAM START handled outside the stream path",
                None,
                None,
            ),
        }
    }

    /// One change (outside a stream block, or replayed from a streamed transaction's buffer).
    fn apply_change(&mut self, msg: LogicalMessage) {
        apply_change(&mut self.applier, &mut self.progress, msg);
    }

    /// Applies a streamed transaction's buffered changes in one local transaction, finished by
    /// `finish` (commit or prepare).
    fn apply_streamed(
        &mut self,
        xid: u32,
        begin: Begin,
        prepared: bool,
        finish: impl FnOnce(&mut Applier, &mut Progress),
    ) {
        let foreign = self.streams.is_foreign(xid);
        let buffered = self.streams.take(xid);
        self.applier.begin(begin, &mut self.progress);
        if prepared {
            super::conflict::txn_is_prepared();
        }
        if foreign {
            self.applier.origin("");
        }
        let mut relations = buffered.relations.into_iter().peekable();
        let mut n = 0u64;
        for rec in buffered.changes.into_iter().flatten() {
            // The descriptions that arrived before this change.
            while let Some((_, raw)) = relations.next_if(|(at, _)| *at <= n) {
                self.apply_buffered_relation(xid, raw);
            }
            let bytes = match rec {
                Ok(b) => b,
                Err(e) => stream::Streams::fail(e, xid),
            };
            let msg = match pgoutput::decode_one(bytes, self.proto_version, true) {
                Ok(m) => m,
                Err(e) => report::error(
                    Code::ERRCODE_DATA_CORRUPTED,
                    format!("buffered change of streamed transaction {xid} does not decode: {e}"),
                    None,
                    None,
                ),
            };
            self.apply_change(msg);
            n += 1;
            if n.is_multiple_of(1000) {
                self.keep_publisher_alive();
            }
            if self.progress.publish_due() {
                self.progress.publish(None, 0);
            }
        }
        // Descriptions after the last change still hold for the transactions that follow.
        for (_, raw) in relations {
            self.apply_buffered_relation(xid, raw);
        }
        finish(&mut self.applier, &mut self.progress);
        self.progress.publish(None, now());
    }

    /// A RELATION message kept with a streamed transaction, taken where it arrived.
    fn apply_buffered_relation(&mut self, xid: u32, raw: Vec<u8>) {
        match pgoutput::decode_one(bytes::Bytes::from(raw), self.proto_version, true) {
            Ok(LogicalMessage::Relation(r)) => self.applier.on_relation(r),
            Ok(other) => report::error(
                Code::ERRCODE_INTERNAL_ERROR,
                format!("relation description of streamed transaction {xid} decodes as \"{}\"", other.kind()),
                None,
                None,
            ),
            Err(e) => report::error(
                Code::ERRCODE_DATA_CORRUPTED,
                format!("relation description of streamed transaction {xid} does not decode: {e}"),
                None,
                None,
            ),
        }
    }

    /// During a long apply the socket is not read: tell the walsender we are alive (it would
    /// otherwise end the connection after wal_sender_timeout).
    /// What the walsender said on the way (NoticeResponse), in the server log as native's
    /// libpq prints it there: a PostgreSQL 18 publisher skips the changes of a publication that
    /// no longer exists with only a WARNING ("skipped loading publication"), which must not be
    /// lost.
    fn report_publisher_notices(&mut self) {
        for n in self.client.notices() {
            let level = match n.severity.as_str() {
                "WARNING" | "ERROR" | "FATAL" | "PANIC" => PgLogLevel::WARNING,
                _ => PgLogLevel::LOG,
            };
            report::log(
                level,
                PgSqlErrorCode::ERRCODE_WARNING,
                format!("pgsub: the publisher of subscription \"{}\" says: {}", self.sub.name, n.message),
                n.detail,
                n.hint.as_deref(),
            );
        }
    }

    /// The socket has been empty for a second since data last came (or since the start) and the
    /// walsender has not said it has read all the WAL there is (it does when it reaches the end
    /// with something unconfirmed, not when this worker confirmed everything first): asks it
    /// once for a keepalive, whose WAL end tells (`Progress::on_keepalive`). Without it the
    /// apply lag of an idle subscription could stay unknown until the publisher writes again.
    fn ask_if_idle(&mut self) {
        if self.progress.idle_seen() || self.idle_asked || self.progress.data_at.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.idle_asked = true;
        self.send_feedback(true, true);
    }

    fn keep_publisher_alive(&mut self) {
        if self.progress.since_report() >= std::time::Duration::from_secs(5) {
            self.send_feedback(true, false);
        }
    }

    pub(super) fn send_feedback(&mut self, force: bool, reply_requested: bool) {
        let pos = self.progress.positions(self.applier.open());
        if !self.progress.report_due(pos, gucs::ms(&gucs::STATUS_INTERVAL_MS), force || reply_requested) {
            return;
        }
        if let Err(e) = self.client.send_status(pos.0, pos.1, pos.2, reply_requested) {
            self.fail(&e, "could not send a status update to the publisher");
        }
        self.reply_asked |= reply_requested;
        self.progress.reported(pos);
    }

    fn check_timeout(&mut self) {
        let timeout = gucs::ms(&gucs::RECEIVER_TIMEOUT_MS);
        if timeout.is_zero() {
            return;
        }
        let silent = self.last_recv.elapsed();
        if silent >= timeout {
            // The network failed, not the transaction being received: no apply context (which
            // would offer its finish LSN to skip_transaction).
            errctx::clear();
            report::error(
                Code::ERRCODE_CONNECTION_FAILURE,
                format!(
                    "terminating pgsub apply worker for subscription \"{}\" due to timeout: nothing received from the publisher for {} ms",
                    self.sub.name,
                    silent.as_millis()
                ),
                None,
                Some("Check the publisher and the network; the worker reconnects. pgsub.receiver_timeout sets the limit."),
            );
        }
        if silent >= timeout / 2 && !self.ping_sent {
            self.send_feedback(true, true);
            self.ping_sent = true;
        }
    }

    /// Sleeps on the latch and the socket, at most a second. While applied commits wait for the
    /// WAL writer to make them durable (synchronous_commit = off and `pgsub.flush_when_idle`
    /// off), it wakes every 100 ms to confirm them as soon as they are flushed, as PostgreSQL's
    /// worker wakes after wal_writer_delay: the publisher then learns without a second's delay
    /// that it may let go. A status update held back (`Progress::report_due`) wakes it sooner.
    fn wait(&mut self) {
        let fd = self.client.raw_fd();
        // While tables synchronize the apply worker looks at its sync workers every
        // `syncing::STEP` too: the next table's worker starts as soon as one has finished (its
        // exit sets the latch, but the step may have run moments before and waits out its STEP).
        let syncing = self.catchup_end.is_none() && self.applier.tables.any_syncing();
        let holding = self.catchup_end.is_none() && self.hold.pending(self.sub.subid);
        let timeout_ms = if self.batching {
            1
        } else if let Some(left) = self.progress.flush_held_for() {
            (left.as_millis() as i64).max(1)
        } else if self.progress.unreported() {
            super::progress::REPORT_MIN_GAP.as_millis() as i64
        } else if syncing {
            super::syncing::STEP.as_millis() as i64
        } else if self.progress.awaiting_flush() || holding {
            100
        } else {
            1000
        };
        if self.waiter.as_ref().is_none_or(|w| w.fd() != fd) {
            self.waiter = Some(SocketWait::new(fd));
        }
        if let Some(w) = self.waiter.as_mut() {
            w.wait(timeout_ms);
        }
        crate::process::absorb_signals();
        // A cancel (`pg_cancel_backend`) is answered at once, as native's worker does — an error,
        // then the retry — not left pending until some later transaction's first statement, which
        // it would fail hours after the request.
        // SAFETY: reads a sig_atomic_t flag set by the signal handler.
        if unsafe { std::ptr::addr_of!(pg_sys::QueryCancelPending).read_volatile() } != 0 {
            pg_sys::check_for_interrupts!();
        }
    }

    /// Receive batching (`pgsub.receive_batch`). A round of reading that took at least the batch
    /// means the stream is in full flow: the socket is then set to wake this worker only once a
    /// batch is queued, and `wait` sleeps at most 1 ms, so that the worker reads and applies in
    /// larger pieces (fewer wake-ups, local commits, flushes and status updates) and the
    /// walsender's sends need not wake it each time (bench/NOTES.md, 24). A round that took less
    /// (the stream slowed or ended) sets the socket back to waking at the first byte. At most
    /// 1 ms is added to when the last piece of a stream is seen.
    fn set_batching(&mut self, round_bytes: usize) {
        let batch = gucs::RECEIVE_BATCH_KB.get().max(0) as usize * 1024;
        let on = batch > 0 && round_bytes >= batch;
        if on == self.batching {
            return;
        }
        let mark = if on { batch as u32 } else { 1 };
        if let Err(e) = self.client.set_receive_low_water(mark) {
            self.fail(&e, "could not set the replication socket's receive low-water mark");
        }
        self.batching = on;
    }

    fn fail(&mut self, e: &ProtoError, what: &str) -> ! {
        if matches!(e, ProtoError::Interrupted) {
            self.stop();
            // SAFETY: clean exit of a background worker that was asked to stop.
            unsafe { pg_sys::proc_exit(0) };
        }
        // A connection failure is no fault of the transaction being received: no apply context.
        errctx::clear();
        // The walsender raised an error (and ended the stream): the connection was not lost;
        // native's words.
        let what = match e {
            ProtoError::Server(_) if what == LOST_CONNECTION => "could not receive data from WAL stream",
            _ => what,
        };
        // Which walsender, and how the stream ended, for the DBA (and for us reading a log).
        let (msg, detail, hint) = publisher::describe(e);
        let how = format!(
            "Walsender process {} on the publisher{}.",
            self.client.backend_pid(),
            if self.client.server_ended_stream() { "; it ended the stream with CopyDone" } else { "" }
        );
        let detail = Some(detail.map_or(how.clone(), |d| format!("{d} {how}")));
        report::error(
            publisher::sqlstate(e),
            format!("subscription \"{}\": {what}: {msg}", self.sub.name),
            detail,
            hint.as_deref(),
        )
    }

    /// Clean stop on SIGTERM: abort a half-applied transaction (it is re-sent after restart),
    /// report what is durable, and say goodbye to the walsender.
    pub(super) fn stop(&mut self) {
        // A half-applied transaction is not done: do not report what was received as flushed.
        let in_txn = self.applier.open();
        self.applier.abort();
        if let Some(p) = self.parallel.as_mut() {
            p.shutdown();
        }
        let pos = self.progress.positions(in_txn);
        let _ = self.client.send_status(pos.0, pos.1, pos.2, false);
        // Ended as native's worker ends it (PQfinish): the walsender exits without an
        // "unexpected EOF on standby connection" in the publisher's log at every stop.
        self.client.terminate();
        self.progress.publish(None, 0);
        // A stop asked for (disable, a changed option, a refresh, server shutdown) is routine: the
        // pending SIGTERM must not turn this LOG line into a FATAL one (errfinish checks for
        // interrupts). SAFETY: HOLD_INTERRUPTS(), never resumed: the worker returns and exits.
        unsafe { pg_sys::InterruptHoldoffCount += 1 };
        // Why, for a DBA reading the log (native's worker says "terminating … due to
        // administrator command" for a SIGTERM).
        let what = if crate::process::stop_asked_by_pgsub() {
            self.stop_reason()
        } else {
            "is stopping (SIGTERM: a server shutdown or pg_terminate_backend)".to_string()
        };
        log!("pgsub apply worker for subscription \"{}\" {what}", self.sub.name);
    }

    /// Why pgsub asked this worker to stop: what the pgsub function that stopped it said
    /// (`process::StopReason`), or else what the catalog shows changed (the launcher stops a
    /// worker once a change is committed), in native's words where it has them.
    fn stop_reason(&self) -> String {
        let subid = self.sub.subid;
        let said = crate::shmem::with_slot(subid, |s| s.stop_reason).and_then(crate::process::StopReason::from_u8);
        if let Some(r) = said {
            return r.says().into();
        }
        // SAFETY: reads this backend's interrupt hold-off count (stop() holds interrupts).
        let held = unsafe { pg_sys::InterruptHoldoffCount };
        let now = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
            Some(super::xact(|| crate::catalog::load(subid).ok().flatten()))
        }))
        .catch_others(|_| {
            // SAFETY: leaves the transaction the failed read began; the ERROR's cleanup reset
            // the hold-off, which must stay until the worker exits (a pending SIGTERM would
            // turn the LOG line into a FATAL one).
            unsafe {
                pg_sys::AbortOutOfAnyTransaction();
                pg_sys::InterruptHoldoffCount = held;
            }
            None
        })
        .execute();
        match now {
            Some(None) => "will stop because the subscription was removed".into(),
            Some(Some(s)) if !s.enabled => "will stop because the subscription was disabled".into(),
            Some(Some(s)) if self.sub.owner_superuser && !s.owner_superuser => {
                "will restart because the subscription owner's superuser privileges have been revoked".into()
            }
            Some(Some(s)) if s.config_hash() != self.sub.config_hash() => {
                "will restart because of a parameter change".into()
            }
            _ => "is stopping (the subscription was disabled, changed or dropped)".into(),
        }
    }
}

/// Applies one change message: INSERT, UPDATE, DELETE, TRUNCATE or a logical decoding message
/// (counted); anything else here is a protocol violation.
pub(super) fn apply_change(applier: &mut Applier, p: &mut Progress, msg: LogicalMessage) {
    // A transaction of millions of changes (from the socket, or replayed from its spill file at
    // its commit) is a long time without a wait: a sign of life per change.
    crate::process::heartbeat();
    match msg {
        LogicalMessage::Insert(m) => applier.insert(m, p),
        LogicalMessage::Update(m) => applier.update(m, p),
        LogicalMessage::Delete(m) => applier.delete(m, p),
        LogicalMessage::Truncate(m) => execute::with_snapshot(|| applier.truncate(m, p)),
        LogicalMessage::Message(_) => p.counters.messages += 1,
        other => report::error(
            Code::ERRCODE_PROTOCOL_VIOLATION,
            format!("unexpected message \"{}\" in a streamed transaction", other.kind()),
            None,
            None,
        ),
    }
}

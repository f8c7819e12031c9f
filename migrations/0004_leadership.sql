-- 0004_leadership: several replicas on one database, one leader (README "Running several
-- replicas"), and every slot accounted for (README "Missed slots and outages").

-- The leader lease: one row per lease name ('leader'). A replica takes it when it is absent or
-- expired by the database's clock; the term grows by one at every change of holder, and every
-- claim and outcome write of a leader names its term (fencing).
CREATE TABLE leader_lease (
    name        text        PRIMARY KEY,
    term        bigint      NOT NULL,
    daemon_id   text        NOT NULL,
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    acquired_at timestamptz NOT NULL,
    renewed_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    CONSTRAINT leader_lease_term_check CHECK (term > 0)
);

COMMENT ON TABLE leader_lease IS
    'The leader lease (row name = ''leader''): who fires schedules, sends calls, tracks images and prunes. Times are the database clock.';
COMMENT ON COLUMN leader_lease.term IS 'Leadership term; grows by one at every change of holder. Writes of an older term are refused.';
COMMENT ON COLUMN leader_lease.daemon_id IS 'Identity of the holder (host/pid/start).';
COMMENT ON COLUMN leader_lease.host IS 'Host name of the holder.';
COMMENT ON COLUMN leader_lease.pid IS 'Process id of the holder on its host.';
COMMENT ON COLUMN leader_lease.acquired_at IS 'When the holder took the lease (this term began).';
COMMENT ON COLUMN leader_lease.renewed_at IS 'When the holder last renewed the lease.';
COMMENT ON COLUMN leader_lease.expires_at IS 'When the lease lapses unless renewed; set to the past when the holder resigns.';

-- Every replica (leader or standby) and every imager once announces itself here.
CREATE TABLE replicas (
    daemon_id  text        PRIMARY KEY,
    host       text        NOT NULL,
    pid        integer     NOT NULL,
    role       text        NOT NULL,
    version    text        NOT NULL DEFAULT '',
    started_at timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL,
    CONSTRAINT replicas_role_check CHECK (role IN ('leader', 'standby', 'once', 'stopped'))
);

COMMENT ON TABLE replicas IS 'imager processes seen on this database: one row per process, refreshed while it runs.';
COMMENT ON COLUMN replicas.role IS 'leader, standby, once (an imager once), or stopped (exited cleanly).';
COMMENT ON COLUMN replicas.seen_at IS 'When the process last reported (database clock).';

CREATE INDEX replicas_seen_idx ON replicas (seen_at);

-- The leader term under which a run was claimed or last taken over.
ALTER TABLE image_runs ADD COLUMN term bigint;
COMMENT ON COLUMN image_runs.term IS
    'Leader term that claimed the run or last took it over; NULL for runs written without leadership (before 0004).';

-- Per policy, the latest slot the scheduler has handled (fired, recorded missed or skipped). On
-- start and on leadership gain the scheduler walks every slot after it.
CREATE TABLE policy_slots (
    policy     text        PRIMARY KEY,
    last_slot  timestamptz NOT NULL,
    term       bigint,
    updated_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE policy_slots IS 'Per policy, the latest slot handled: the point from which missed slots are counted.';
COMMENT ON COLUMN policy_slots.last_slot IS 'Nominal time of the latest slot fired or recorded.';
COMMENT ON COLUMN policy_slots.term IS 'Leader term that recorded it.';

-- imager once beside a running leader: the request is handed to the leader through this table
-- (and NOTIFY imager_fire_requests); the leader fires it through its own pool and pace.
CREATE TABLE fire_requests (
    id            bigserial   PRIMARY KEY,
    policy        text        NOT NULL,
    instances     text[]      NOT NULL DEFAULT '{}',
    slot          timestamptz NOT NULL,
    requested_by  text        NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    status        text        NOT NULL DEFAULT 'pending',
    taken_by      text,
    taken_term    bigint,
    finished_at   timestamptz,
    error_message text,
    CONSTRAINT fire_requests_status_check CHECK (status IN ('pending', 'taken', 'done', 'failed'))
);

COMMENT ON TABLE fire_requests IS 'Fires asked for by imager once and carried out by the leader.';
COMMENT ON COLUMN fire_requests.instances IS 'Instances to fire; empty means every target of the policy.';
COMMENT ON COLUMN fire_requests.slot IS 'The slot the fire uses (the second once was started, or its --slot).';
COMMENT ON COLUMN fire_requests.status IS 'pending, taken (the leader is firing it), done (its runs are written), failed (error_message says why).';

CREATE INDEX fire_requests_pending_idx ON fire_requests (id) WHERE status IN ('pending', 'taken');

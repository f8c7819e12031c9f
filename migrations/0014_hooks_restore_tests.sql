-- 0014_hooks_restore_tests: the commands a policy's hooks run on its instances through TAT around
-- CreateImage (hook_runs), and the restore tests that launch an instance from an image, check it
-- and terminate it (restore_tests, restore_test_configs). imager's code writes every row and its
-- notification events in the transaction of each change (docs/design.md); restore_coverage is in
-- schema/views.sql.

-- One row per (run, phase): written before the RunCommand call that carries it, so a crash between
-- the pre hook and the post hook is found (a pre row without a post row gets its post at once).
CREATE TABLE hook_runs (
    id            bigserial   PRIMARY KEY,
    run_id        bigint      NOT NULL REFERENCES image_runs (id) ON DELETE CASCADE,
    account       text        NOT NULL,
    policy        text        NOT NULL,
    instance_id   text        NOT NULL,
    region        text        NOT NULL,
    phase         text        NOT NULL,
    status        text        NOT NULL DEFAULT 'requested',
    invocation_id text,
    task_id       text,
    task_status   text,
    exit_code     integer,
    output        text,
    error_code    text,
    error_message text,
    requested_at  timestamptz NOT NULL,
    started_at    timestamptz,
    finished_at   timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT hook_runs_phase_key UNIQUE (run_id, phase),
    CONSTRAINT hook_runs_phase_check CHECK (phase IN ('pre', 'post')),
    CONSTRAINT hook_runs_status_check CHECK (status IN ('requested', 'running', 'success', 'failed', 'timeout', 'agent_offline', 'error')),
    CONSTRAINT hook_runs_finished_check CHECK ((finished_at IS NULL) = (status IN ('requested', 'running'))),
    CONSTRAINT hook_runs_output_check CHECK (octet_length(output) <= 4096)
);

COMMENT ON TABLE hook_runs IS
    'One row per (run, phase) of a policy''s hooks: the TAT command run on the instance before (pre) or after (post) its CreateImage, written before the RunCommand call.';
COMMENT ON COLUMN hook_runs.id IS 'Hook run id.';
COMMENT ON COLUMN hook_runs.run_id IS 'Run (image_runs.id) the hook is for; the row goes when the run is pruned.';
COMMENT ON COLUMN hook_runs.account IS 'Account whose credentials make the TAT calls (image_runs.account of the run).';
COMMENT ON COLUMN hook_runs.policy IS 'Policy of the run, whose hooks: block names the command.';
COMMENT ON COLUMN hook_runs.instance_id IS 'Instance the command runs on.';
COMMENT ON COLUMN hook_runs.region IS 'Region of the instance, where the TAT calls are sent.';
COMMENT ON COLUMN hook_runs.phase IS 'pre: before CreateImage (e.g. freeze); post: after CreateImage was answered, or the slot abandoned (e.g. thaw).';
COMMENT ON COLUMN hook_runs.status IS
    'requested: RunCommand is being or was called, outcome not known; running: TAT took the command; '
    'success: the task ended SUCCESS; failed: it ended FAILED (see exit_code); timeout: it ran past the hook''s timeout; '
    'agent_offline: the instance''s TAT agent was not online or not installed; error: TAT refused or lost the command (see error_code).';
COMMENT ON COLUMN hook_runs.invocation_id IS 'TAT invocation (inv-...) that carried the command; one invocation covers up to 200 instances of a fire.';
COMMENT ON COLUMN hook_runs.task_id IS 'TAT invocation task (invt-...) of this instance.';
COMMENT ON COLUMN hook_runs.task_status IS 'The task''s last status as TAT reported it (SUCCESS, FAILED, TIMEOUT, ...).';
COMMENT ON COLUMN hook_runs.exit_code IS 'Exit code of the command, when TAT gave one.';
COMMENT ON COLUMN hook_runs.output IS 'Output of the command, clipped to its first 4 KiB.';
COMMENT ON COLUMN hook_runs.error_code IS
    'Why the hook did not succeed: PreHookFailed/PostHookFailed, PreHookTimeout/PostHookTimeout, AgentOffline, or the API''s error code.';
COMMENT ON COLUMN hook_runs.error_message IS 'Message that goes with error_code.';
COMMENT ON COLUMN hook_runs.requested_at IS 'When imager decided to run the command (before the RunCommand call).';
COMMENT ON COLUMN hook_runs.started_at IS 'When the task started on the instance, as TAT reported it.';
COMMENT ON COLUMN hook_runs.finished_at IS 'When the task ended (TAT''s end time, or when imager saw the outcome); NULL exactly while requested or running.';
COMMENT ON COLUMN hook_runs.updated_at IS 'When the row last changed (database clock).';

-- Hooks still to answer or to follow, oldest first; and pre hooks whose post is still to run.
CREATE INDEX hook_runs_open_idx ON hook_runs (requested_at, id) WHERE status IN ('requested', 'running');
CREATE INDEX hook_runs_pre_idx ON hook_runs (requested_at, run_id) WHERE phase = 'pre';

-- The restore tests the loaded policy file names, as imager loaded them: restore_coverage reads
-- them. imager upserts a row per test when it loads the file and marks the tests it no longer has.
CREATE TABLE restore_test_configs (
    name            text             PRIMARY KEY,
    policy          text             NOT NULL,
    overdue_seconds double precision NOT NULL,
    loaded_at       timestamptz      NOT NULL,
    removed_at      timestamptz,
    CONSTRAINT restore_test_configs_overdue_check CHECK (overdue_seconds > 0)
);

COMMENT ON TABLE restore_test_configs IS 'One row per restore test the policy file has or had (restore_tests: in the file).';
COMMENT ON COLUMN restore_test_configs.name IS 'Restore test name.';
COMMENT ON COLUMN restore_test_configs.policy IS 'Policy whose images the test restores.';
COMMENT ON COLUMN restore_test_configs.overdue_seconds IS
    'How long an instance of the policy may go without a passed test before restore_coverage calls it overdue: the time the test takes to reach every instance in turn (its sample per slot), twice.';
COMMENT ON COLUMN restore_test_configs.loaded_at IS 'When imager last loaded the test from the file.';
COMMENT ON COLUMN restore_test_configs.removed_at IS 'When the file stopped naming the test; NULL while it is loaded.';

-- One row per (test, slot, instance tested): written before the RunInstances call, whose
-- ClientToken is derived from the test, the slot and the instance so a retry never launches twice.
CREATE TABLE restore_tests (
    id                   bigserial   PRIMARY KEY,
    test                 text        NOT NULL,
    slot                 timestamptz NOT NULL,
    account              text        NOT NULL,
    policy               text        NOT NULL,
    instance_id          text        NOT NULL,
    region               text        NOT NULL,
    zone                 text        NOT NULL,
    run_id               bigint      REFERENCES image_runs (id) ON DELETE SET NULL,
    copy_id              bigint      REFERENCES image_copies (id) ON DELETE SET NULL,
    image_id             text        NOT NULL,
    client_token         text        NOT NULL,
    launched_instance_id text,
    status               text        NOT NULL DEFAULT 'launching',
    error_code           text,
    error_message        text,
    invocation_id        text,
    task_id              text,
    exit_code            integer,
    output               text,
    keep_for_seconds     double precision NOT NULL,
    started_at           timestamptz NOT NULL,
    launched_at          timestamptz,
    checked_at           timestamptz,
    terminated_at        timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT restore_tests_slot_key UNIQUE (test, slot, instance_id),
    CONSTRAINT restore_tests_token_key UNIQUE (client_token),
    CONSTRAINT restore_tests_status_check CHECK (status IN ('launching', 'checking', 'passed', 'failed')),
    CONSTRAINT restore_tests_checked_check CHECK ((checked_at IS NULL) = (status IN ('launching', 'checking'))),
    CONSTRAINT restore_tests_output_check CHECK (octet_length(output) <= 4096),
    CONSTRAINT restore_tests_keep_check CHECK (keep_for_seconds > 0)
);

COMMENT ON TABLE restore_tests IS
    'One row per instance a restore test tried: the instance launched from its latest image, the check run on it, and its termination.';
COMMENT ON COLUMN restore_tests.id IS 'Restore test run id.';
COMMENT ON COLUMN restore_tests.test IS 'Restore test name (restore_tests: in the policy file).';
COMMENT ON COLUMN restore_tests.slot IS 'Slot of the test''s schedule this row belongs to (or the time of an imager restore-test --now).';
COMMENT ON COLUMN restore_tests.account IS 'Account whose credentials launch, check and terminate the instance.';
COMMENT ON COLUMN restore_tests.policy IS 'Policy whose image is tested.';
COMMENT ON COLUMN restore_tests.instance_id IS 'Instance whose image is tested (the source instance, not the launched one).';
COMMENT ON COLUMN restore_tests.region IS 'Region the instance is launched in: the image''s region, or the copy''s.';
COMMENT ON COLUMN restore_tests.zone IS 'Availability zone the instance is launched in (launch.zone).';
COMMENT ON COLUMN restore_tests.run_id IS 'Run whose image is tested (image_runs.id); NULL once pruned.';
COMMENT ON COLUMN restore_tests.copy_id IS 'Copy tested (image_copies.id) when the test names a region; NULL otherwise or once pruned.';
COMMENT ON COLUMN restore_tests.image_id IS 'Image the instance is launched from.';
COMMENT ON COLUMN restore_tests.client_token IS 'RunInstances ClientToken: the same for every retry of this row, so at most one instance is launched.';
COMMENT ON COLUMN restore_tests.launched_instance_id IS 'Instance RunInstances launched; NULL until its answer is known.';
COMMENT ON COLUMN restore_tests.status IS
    'launching: the instance is being launched or waited for (RUNNING, then its TAT agent online); checking: the check command runs; '
    'passed: the check exited 0; failed: see error_code.';
COMMENT ON COLUMN restore_tests.error_code IS
    'Why the test failed: LaunchFailed, AgentOffline, CheckFailed, CheckTimeout, Timeout, ImageNotFound, or the API''s error code.';
COMMENT ON COLUMN restore_tests.error_message IS 'Message that goes with error_code.';
COMMENT ON COLUMN restore_tests.invocation_id IS 'TAT invocation of the check command.';
COMMENT ON COLUMN restore_tests.task_id IS 'TAT invocation task of the check on the launched instance.';
COMMENT ON COLUMN restore_tests.exit_code IS 'Exit code of the check command, when TAT gave one.';
COMMENT ON COLUMN restore_tests.output IS 'Output of the check command, clipped to its first 4 KiB.';
COMMENT ON COLUMN restore_tests.keep_for_seconds IS 'keep_for of the test: the launched instance is terminated at the latest this long after launched_at.';
COMMENT ON COLUMN restore_tests.started_at IS 'When imager decided to launch (before the RunInstances call).';
COMMENT ON COLUMN restore_tests.launched_at IS 'When RunInstances answered with the instance id.';
COMMENT ON COLUMN restore_tests.checked_at IS 'When the test ended (passed or failed); NULL exactly while launching or checking.';
COMMENT ON COLUMN restore_tests.terminated_at IS 'When TerminateInstances was accepted for the launched instance (or it was found gone); NULL while it may run.';
COMMENT ON COLUMN restore_tests.updated_at IS 'When the row last changed (database clock).';

-- Tests in flight, and launched instances not yet terminated (the sweep on every leadership gain).
CREATE INDEX restore_tests_open_idx ON restore_tests (started_at, id) WHERE checked_at IS NULL OR terminated_at IS NULL;
-- The newest tests of one (test, instance): the turn order of sample and restore_coverage.
CREATE INDEX restore_tests_instance_idx ON restore_tests (test, instance_id, checked_at DESC) WHERE checked_at IS NOT NULL;

-- The hooks' and restore tests' events join the outbox. A restore event's instance_id is the
-- instance whose image was tested; its detail names the test and the launched instance.
ALTER TABLE notifications DROP CONSTRAINT notifications_event_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_event_check CHECK (event IN ('failed', 'missed', 'recovered',
    'rpo_breach', 'fire_started', 'fire_succeeded', 'fire_failed', 'copy_failed', 'copy_recovered',
    'hook_failed', 'restore_failed', 'restore_recovered'));
COMMENT ON COLUMN notifications.event IS
    'failed, missed (a run ended so), recovered (available after a failed or missed run, or after being overdue), '
    'rpo_breach (an instance entered rpo_breaches), fire_started, fire_succeeded, fire_failed (a fire of the policy, for its ping), '
    'copy_failed (a copy in another region failed), copy_recovered (a copy available in a region after a failed copy there), '
    'hook_failed (a pre or post hook did not succeed; detail names the phase), '
    'restore_failed (a restore test failed), restore_recovered (a restore test passed after a failed one of the same test and instance); '
    'the copy events name the region in detail, the restore events the test.';

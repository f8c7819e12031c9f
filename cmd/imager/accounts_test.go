package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/imager-dev/imager/internal/cvm/cvmsim"
	"github.com/imager-dev/imager/internal/pgcluster/pgtest"
	"github.com/imager-dev/imager/internal/policy"
)

// Two accounts end to end (docs/policies.md "Accounts"): the real binary leads against a simulator
// that holds two accounts, each with its own key pair, instances and API limits (10 CreateImage
// per sliding second per account), and the assertions count what the simulator saw per key.

const (
	prodSecretID, prodSecretKey = "AKIDprodaccount0001", "prod-secret-key-not-to-be-logged"
	devSecretID, devSecretKey   = "AKIDdevaccount00002", "dev-secret-key-not-to-be-logged"
)

// TestTwoAccountsFireInParallelAtFullRateEach: two policies of two accounts on one schedule fire
// the same slot. Each account's CreateImage calls are signed with its own key, for its own
// instances, at most 10 in any second of that account, while the two together go above 10 in one
// second (each has its own pace); history records each run's account, and history --account
// lists one account's runs. No secret reaches the logs or the output.
func TestTwoAccountsFireInParallelAtFullRateEach(t *testing.T) {
	t.Parallel()
	const n = 40
	dbURL := pgtest.NewDatabase(t)
	pool, err := pgxpool.New(context.Background(), dbURL)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	c := &cluster{bin: imagerBinary(t), dbURL: dbURL, dir: t.TempDir(), pool: pool}
	c.sim = cvmsim.New(cvmsim.Options{Seed: 1, Accounts: []cvmsim.Account{
		{SecretID: prodSecretID, SecretKey: prodSecretKey}, {SecretID: devSecretID, SecretKey: devSecretKey}}})
	url, err := c.sim.Start()
	require.NoError(t, err)
	c.simURL = url
	t.Cleanup(c.sim.Close)
	prod, dev := instanceIDs("prd", n), instanceIDs("dev", n)
	owner := map[string]string{}
	for _, id := range prod {
		c.sim.AddInstance(cvmsim.Instance{ID: id, Region: "ap-guangzhou", Account: prodSecretID})
		owner[id] = prodSecretID
	}
	for _, id := range dev {
		c.sim.AddInstance(cvmsim.Instance{ID: id, Region: "ap-guangzhou", Account: devSecretID})
		owner[id] = devSecretID
	}
	c.policies = filepath.Join(c.dir, "policies.yaml")
	require.NoError(t, os.WriteFile(c.policies, []byte(fmt.Sprintf(`version: 1
api: {create_image_rate: 10, workers: 4}
accounts:
  - name: prod
    secret_id_env: TEST_PROD_SECRET_ID
    secret_key_env: TEST_PROD_SECRET_KEY
  - name: dev
    secret_id_env: TEST_DEV_SECRET_ID
    secret_key_env: TEST_DEV_SECRET_KEY
defaults: {region: ap-guangzhou, timezone: UTC}
policies:
  - name: prod-web
    account: prod
    schedule: "@every 1m"
    instances: [%s]
  - name: dev-web
    account: dev
    schedule: "@every 1m"
    instances: [%s]
`, strings.Join(prod, ", "), strings.Join(dev, ", "))), 0o600))
	env := append(c.env(), "TEST_PROD_SECRET_ID="+prodSecretID, "TEST_PROD_SECRET_KEY="+prodSecretKey,
		"TEST_DEV_SECRET_ID="+devSecretID, "TEST_DEV_SECRET_KEY="+devSecretKey)

	p := &proc{name: "a", done: make(chan struct{})}
	p.cmd = exec.Command(c.bin, c.args("run", "spool-a")...)
	p.cmd.Env = env
	startProc(t, p)

	// The first slot both policies fired in full.
	var slot time.Time
	waitUntil(t, "one slot with every run of both policies requested", func() bool {
		err := pool.QueryRow(context.Background(), `SELECT scheduled_at FROM image_runs
			WHERE request_id IS NOT NULL GROUP BY scheduled_at HAVING count(*) = $1
			ORDER BY scheduled_at LIMIT 1`, 2*n).Scan(&slot)
		return err == nil
	})

	var prodCalls, devCalls []time.Time
	for _, call := range c.sim.Calls() {
		if call.Action != cvmsim.ActionCreateImage {
			continue
		}
		id, _ := call.Params["InstanceId"].(string)
		require.Equalf(t, owner[id], call.SecretID, "CreateImage for %s signed with the key of its own account", id)
		require.Emptyf(t, call.Code, "CreateImage for %s answered %s", id, call.Code)
		switch call.SecretID {
		case prodSecretID:
			prodCalls = append(prodCalls, call.At)
		case devSecretID:
			devCalls = append(devCalls, call.At)
		}
	}
	require.Len(t, prodCalls, n, "one CreateImage per prod instance")
	require.Len(t, devCalls, n, "one CreateImage per dev instance")
	require.LessOrEqual(t, cvmsim.MaxInWindow(prodCalls, time.Second), 10, "prod under its own limit")
	require.LessOrEqual(t, cvmsim.MaxInWindow(devCalls, time.Second), 10, "dev under its own limit")
	both := append(append([]time.Time{}, prodCalls...), devCalls...)
	sort.Slice(both, func(i, j int) bool { return both[i].Before(both[j]) })
	require.Greater(t, cvmsim.MaxInWindow(both, time.Second), 10,
		"the two accounts' calls overlap above one account's limit: each has its own pace")

	rows, err := pool.Query(context.Background(), `SELECT policy, account, count(*) FROM image_runs
		WHERE scheduled_at = $1 GROUP BY policy, account ORDER BY policy`, slot)
	require.NoError(t, err)
	got := map[string]string{}
	for rows.Next() {
		var pol, account string
		var count int
		require.NoError(t, rows.Scan(&pol, &account, &count))
		require.Equal(t, n, count)
		got[pol] = account
	}
	require.NoError(t, rows.Err())
	require.Equal(t, map[string]string{"prod-web": "prod", "dev-web": "dev"}, got)

	hist := exec.Command(c.bin, "history", "--account", "dev", "--since", "1h", "--limit", "0", "--format", "csv",
		"--database-url", c.dbURL)
	hist.Env = env
	out, err := hist.CombinedOutput()
	require.NoError(t, err, string(out))
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	require.GreaterOrEqual(t, len(lines), n+1, "header and the dev runs")
	for _, l := range lines[1:] {
		require.Contains(t, l, ",dev-web,", "history --account dev lists dev's runs only")
	}

	for _, secret := range []string{prodSecretKey, devSecretKey} {
		require.NotContains(t, p.log(), secret)
		require.NotContains(t, string(out), secret)
	}
}

// TestReloadKeepsTheAccountsOpened: a reload may change an account's api: block, not the
// accounts or their credential sources (their clients are opened at start).
func TestReloadKeepsTheAccountsOpened(t *testing.T) {
	load := func(accounts string) *policy.Config {
		t.Helper()
		cfg, err := policy.LoadBytes("p.yaml", []byte(`version: 1
`+accounts+`
policies:
  - name: web
    schedule: "@daily"
    region: ap-guangzhou
    instances: [ins-00000001]
`), policy.WithEnv(func(string) string { return "set" }))
		require.NoError(t, err)
		return cfg
	}
	one := load(`accounts:
  - {name: prod, secret_id_env: A, secret_key_env: B, api: {create_image_rate: 5}}`)
	require.NoError(t, sameAccounts(one, load(`accounts:
  - {name: prod, secret_id_env: A, secret_key_env: B, api: {create_image_rate: 8}}`)), "an api: change applies")
	err := sameAccounts(one, load(`accounts:
  - {name: prod, secret_id_env: A2, secret_key_env: B}`))
	require.ErrorContains(t, err, "restart imager")
	err = sameAccounts(one, load(``))
	require.ErrorContains(t, err, "loaded: prod; file: default")
	require.NoError(t, sameAccounts(load(``), load(``)))
}

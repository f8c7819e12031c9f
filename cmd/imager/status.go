package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/imager-dev/imager/internal/history"
	"github.com/imager-dev/imager/internal/policy"
)

// replicasSeenWithin is how far back imager status lists processes.
const replicasSeenWithin = time.Minute

// statusReport is what imager status prints (and its JSON form).
type statusReport struct {
	Leader   *statusLeader   `json:"leader"` // null when no process ever led
	Replicas []statusReplica `json:"replicas"`
	Policies []statusPolicy  `json:"policies"`
	Now      time.Time       `json:"database_now"`
}

type statusLeader struct {
	DaemonID  string    `json:"daemon_id"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Term      int64     `json:"term"`
	Since     time.Time `json:"since"`
	ExpiresAt time.Time `json:"expires_at"`
	Live      bool      `json:"live"`
}

type statusReplica struct {
	DaemonID  string    `json:"daemon_id"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Role      string    `json:"role"`
	Version   string    `json:"version"`
	StartedAt time.Time `json:"started_at"`
	SeenAt    time.Time `json:"seen_at"`
}

type statusPolicy struct {
	Name     string     `json:"name"`
	Account  string     `json:"account"` // whose credentials the policy's calls use (docs/policies.md "Accounts")
	CopyTo   []string   `json:"copy_to"` // regions its images are copied to, [] for none
	Enabled  bool       `json:"enabled"`
	LastSlot *time.Time `json:"last_slot"` // null when never handled
	NextSlot *time.Time `json:"next_slot"` // null when disabled or never due
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	o.policyFlags(fs)
	o.databaseFlags(fs)
	format := fs.String("format", "table", "table, or json")
	if ok, code := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if *format != "table" && *format != "json" {
		fmt.Fprintf(stderr, "imager status: --format: %q is not one of table, json\n", *format)
		return exitUsage
	}
	cfg, ok := loadPolicies(o.policies, stderr)
	if !ok {
		return exitFail
	}
	log, _ := (&options{logLevel: "error", logFormat: "json"}).logger(io.Discard)
	store, err := history.Open(ctx, o.databaseURL, log)
	if err != nil {
		fmt.Fprintf(stderr, "imager status: %v\n", err)
		return exitFail
	}
	defer store.Close()
	rep, err := readStatus(ctx, store, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "imager status: %v\n", err)
		return exitFail
	}
	if *format == "json" {
		return printJSON(stdout, stderr, "status", rep)
	}
	printStatus(stdout, rep)
	return exitOK
}

// readStatus reads the lease, the replicas seen lately and the slots per policy.
func readStatus(ctx context.Context, store *history.Store, cfg *policy.Config) (statusReport, error) {
	var rep statusReport
	lease, found, err := store.LeaseGet(ctx)
	if err != nil {
		return rep, err
	}
	if found {
		rep.Now = lease.Now
		rep.Leader = &statusLeader{DaemonID: lease.DaemonID, Host: lease.Host, PID: lease.PID, Term: lease.Term,
			Since: lease.AcquiredAt, ExpiresAt: lease.ExpiresAt, Live: lease.Live()}
	} else {
		if err := store.Pool().QueryRow(ctx, `SELECT now()`).Scan(&rep.Now); err != nil {
			return rep, fmt.Errorf("read database clock: %w", err)
		}
		rep.Now = rep.Now.UTC()
	}
	reps, err := store.ReplicasSeen(ctx, replicasSeenWithin)
	if err != nil {
		return rep, err
	}
	rep.Replicas = []statusReplica{}
	for _, r := range reps {
		rep.Replicas = append(rep.Replicas, statusReplica{DaemonID: r.DaemonID, Host: r.Host, PID: r.PID, Role: r.Role,
			Version: r.Version, StartedAt: r.StartedAt, SeenAt: r.SeenAt})
	}
	slots, err := store.PolicySlotsLast(ctx)
	if err != nil {
		return rep, err
	}
	rep.Policies = []statusPolicy{}
	for _, p := range cfg.Policies {
		sp := statusPolicy{Name: p.Name, Account: p.Account, CopyTo: []string{}, Enabled: p.Enabled}
		if sp.Account == "" {
			sp.Account = policy.DefaultAccount
		}
		for _, c := range p.CopyTo {
			sp.CopyTo = append(sp.CopyTo, c.Region)
		}
		if s, ok := slots[p.Name]; ok {
			last := s.LastSlot
			sp.LastSlot = &last
		}
		if p.Enabled {
			if next := policy.NextN(p.Schedule, rep.Now, 1); len(next) == 1 {
				n := next[0].UTC()
				sp.NextSlot = &n
			}
		}
		rep.Policies = append(rep.Policies, sp)
	}
	return rep, nil
}

func printStatus(w io.Writer, rep statusReport) {
	switch l := rep.Leader; {
	case l == nil:
		fmt.Fprintln(w, "leader:   none (no process has led on this database)")
	case l.Live:
		fmt.Fprintf(w, "leader:   %s (host %s, pid %d), term %d, since %s, lease expires %s (in %s, database clock)\n",
			l.DaemonID, l.Host, l.PID, l.Term, l.Since.Format(time.RFC3339), l.ExpiresAt.Format(time.RFC3339),
			l.ExpiresAt.Sub(rep.Now).Round(100*time.Millisecond))
	default:
		fmt.Fprintf(w, "leader:   none live; the last was %s (term %d), its lease expired %s ago (database clock)\n",
			l.DaemonID, l.Term, rep.Now.Sub(l.ExpiresAt).Round(100*time.Millisecond))
	}
	fmt.Fprintf(w, "\nreplicas seen in the last %s:\n", replicasSeenWithin)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  DAEMON\tHOST\tPID\tROLE\tVERSION\tSTARTED\tSEEN")
	for _, r := range rep.Replicas {
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\t%s\t%s ago\n", r.DaemonID, r.Host, r.PID, r.Role, r.Version,
			r.StartedAt.Format(time.RFC3339), rep.Now.Sub(r.SeenAt).Round(100*time.Millisecond))
	}
	_ = tw.Flush()
	fmt.Fprintln(w, "\npolicies:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  POLICY\tACCOUNT\tLAST SLOT\tNEXT SLOT\tCOPY TO")
	for _, p := range rep.Policies {
		last, next := "never", "never (disabled)"
		if p.LastSlot != nil {
			last = p.LastSlot.Format(time.RFC3339)
		}
		if p.NextSlot != nil {
			next = p.NextSlot.Format(time.RFC3339)
		} else if p.Enabled {
			next = "none"
		}
		copyTo := "-"
		if len(p.CopyTo) > 0 {
			copyTo = strings.Join(p.CopyTo, ",")
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", p.Name, p.Account, last, next, copyTo)
	}
	_ = tw.Flush()
}

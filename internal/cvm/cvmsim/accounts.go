package cvmsim

import "fmt"

// accountsOf returns the accounts opts configures; it panics on a configuration no test means.
func accountsOf(opts Options) []Account {
	if len(opts.Accounts) == 0 {
		a := Account{SecretID: opts.SecretID, SecretKey: opts.SecretKey}
		if a.SecretID == "" {
			a.SecretID = DefaultSecretID
		}
		if a.SecretKey == "" {
			a.SecretKey = DefaultSecretKey
		}
		return []Account{a}
	}
	if opts.SecretID != "" || opts.SecretKey != "" {
		panic("cvmsim: New: set either Options.Accounts or Options.SecretID/SecretKey, not both")
	}
	seen := map[string]bool{}
	out := make([]Account, 0, len(opts.Accounts))
	for i, a := range opts.Accounts {
		if a.SecretID == "" || a.SecretKey == "" {
			panic(fmt.Sprintf("cvmsim: New: Options.Accounts[%d] needs a SecretID and a SecretKey", i))
		}
		if seen[a.SecretID] {
			panic(fmt.Sprintf("cvmsim: New: Options.Accounts[%d]: SecretID %s is given twice", i, a.SecretID))
		}
		seen[a.SecretID] = true
		out = append(out, a)
	}
	return out
}

// Accounts returns the SecretIDs of the simulated accounts, the default one first.
func (s *Server) Accounts() []string {
	out := make([]string, len(s.accounts))
	for i, a := range s.accounts {
		out[i] = a.SecretID
	}
	return out
}

// ownerOf returns the account a resource added with account belongs to: the first account when
// empty. It panics for an account the simulator does not hold (a bug in the calling test).
func (s *Server) ownerOf(account, what string) string {
	if account == "" {
		return s.accounts[0].SecretID
	}
	if _, ok := s.keys[account]; !ok {
		panic(fmt.Sprintf("cvmsim: %s: unknown account %s", what, account))
	}
	return account
}

// windowKey names one limiter window: each account has its own per action.
type windowKey struct{ account, action string }

func (s *Server) window(account, action string) *slidingWindow {
	k := windowKey{account, action}
	w, ok := s.windows[k]
	if !ok {
		w = &slidingWindow{}
		s.windows[k] = w
	}
	return w
}

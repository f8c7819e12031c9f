// Package accounts turns a policy account (docs/policies.md "Accounts") into the Tencent Cloud
// credential that signs its calls, with the official SDK's providers.
package accounts

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	tcerr "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/errors"

	"github.com/imager-dev/imager/internal/cvm"
	"github.com/imager-dev/imager/internal/policy"
)

// stsEndpoint is the STS host roles are assumed through; empty means the SDK's own
// (sts.tencentcloudapi.com). Tests point it at a local server.
var stsEndpoint string

// maxMessage caps the part of an SDK error quoted in ours.
const maxMessage = 200

// Credential returns the credential that signs account a's calls:
//
//   - secret_id_env and secret_key_env: the key pair read from those variables with env (os.Getenv
//     in the daemon);
//   - profile: the tccli profile file ~/.tccli/<profile>.credential;
//   - role: the role assumed now through STS AssumeRole, signed with the SDK's default credential
//     chain; the SDK assumes it again before the temporary keys expire;
//   - none of them (policy.DefaultAccount): the SDK's default chain, as cvm.LoadCredential.
//
// An error names the account and, for an account of the accounts: block, its file, line and field
// (a policy.FieldError); it never holds a secret.
func Credential(a *policy.Account, env func(string) string) (common.CredentialIface, error) {
	switch {
	case a.SecretIDEnv != "" || a.SecretKeyEnv != "":
		return keyPair(a, env)
	case a.Profile != "":
		return profile(a)
	case a.Role != nil:
		return role(a)
	}
	cred, err := cvm.LoadCredential()
	if err != nil {
		return nil, fmt.Errorf("account %s: %w", a.Name, err)
	}
	return cred, nil
}

// fieldError is a problem with account a's key, located where the account was written.
func fieldError(a *policy.Account, key, format string, args ...any) error {
	msg := "account " + a.Name + ": " + fmt.Sprintf(format, args...)
	if a.File == "" {
		return errors.New(msg)
	}
	field := key
	if a.Field != "" {
		field = a.Field + "." + key
	}
	return policy.FieldError{File: a.File, Line: a.Line, Field: field, Message: msg}
}

func keyPair(a *policy.Account, env func(string) string) (common.CredentialIface, error) {
	var values [2]string
	for i, v := range []struct{ key, name string }{{"secret_id_env", a.SecretIDEnv}, {"secret_key_env", a.SecretKeyEnv}} {
		if v.name == "" {
			return nil, fieldError(a, v.key, "required: an account's key pair needs both secret_id_env and secret_key_env")
		}
		values[i] = strings.TrimSpace(env(v.name))
		if values[i] == "" {
			return nil, fieldError(a, v.key, "environment variable %s is not set or empty", v.name)
		}
	}
	return common.NewCredential(values[0], values[1]), nil
}

func profile(a *policy.Account) (common.CredentialIface, error) {
	file := "~/.tccli/" + a.Profile + ".credential"
	cred, err := common.NewTccliProfileProvider(a.Profile).GetCredential()
	var sdkErr *tcerr.TencentCloudSDKError
	var pathErr *fs.PathError
	switch {
	case err == nil && (cred.GetSecretId() == "" || cred.GetSecretKey() == ""):
		return nil, fieldError(a, "profile", "%s holds no secretId and secretKey", file)
	case err == nil:
		return cred, nil
	case errors.As(err, &sdkErr) && strings.HasPrefix(sdkErr.Message, "could not find"):
		return nil, fieldError(a, "profile", "no %s (tccli configure --profile %s writes it)", file, a.Profile)
	case errors.As(err, &sdkErr):
		// The SDK's provider messages name files and keys, never values.
		return nil, fieldError(a, "profile", "%s: %s", file, oneLine(sdkErr.Message))
	case errors.As(err, &pathErr):
		return nil, fieldError(a, "profile", "%s: %s", file, oneLine(pathErr.Err.Error()))
	}
	// A JSON error may quote the file, which holds the secret: say only what is wrong.
	return nil, fieldError(a, "profile", "%s is not a tccli credential file (JSON with secretId and secretKey; details not shown: the file holds secrets)", file)
}

func role(a *policy.Account) (common.CredentialIface, error) {
	base, err := cvm.LoadCredential()
	if err != nil {
		return nil, fieldError(a, "role", "the default credentials to assume %s with: %v", a.Role.ARN, err)
	}
	p := common.NewRoleArnProviderWithCredential(base, a.Role.ARN, a.Role.SessionName, int64(a.Role.Duration/time.Second))
	p.Endpoint = stsEndpoint
	cred, err := p.GetCredential()
	if err != nil {
		msg := err.Error()
		var sdkErr *tcerr.TencentCloudSDKError
		if errors.As(err, &sdkErr) {
			msg = sdkErr.Code + ": " + sdkErr.Message
		}
		id, key, token := base.GetCredential()
		return nil, fieldError(a, "role", "AssumeRole %s: %s", a.Role.ARN, oneLine(redact(msg, id, key, token)))
	}
	if id, key, token := cred.GetCredential(); id == "" || key == "" || token == "" {
		return nil, fieldError(a, "role", "AssumeRole %s answered no temporary credentials", a.Role.ARN)
	}
	return cred, nil
}

// redact replaces each secret found in msg: a server may echo what it was sent.
func redact(msg string, secrets ...string) string {
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "[redacted]")
		}
	}
	return msg
}

// oneLine folds msg onto one line of at most maxMessage bytes.
func oneLine(msg string) string {
	msg = strings.Join(strings.Fields(msg), " ")
	if len(msg) > maxMessage {
		cut := maxMessage
		for cut > 0 && msg[cut]&0xC0 == 0x80 {
			cut--
		}
		msg = msg[:cut] + "…"
	}
	return msg
}

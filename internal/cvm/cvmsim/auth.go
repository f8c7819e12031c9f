package cvmsim

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"time"
)

const (
	signAlgorithm = "TC3-HMAC-SHA256"
	signService   = "cvm" // the CVM API's service; TAT's is tatService
	signTerm      = "tc3_request"
)

// authorization is a parsed TC3-HMAC-SHA256 Authorization header.
type authorization struct {
	secretID      string
	date          string
	service       string
	signedHeaders []string
	signature     string
}

// parseAuthorization parses
// "TC3-HMAC-SHA256 Credential=ID/DATE/SERVICE/tc3_request, SignedHeaders=a;b, Signature=HEX".
func parseAuthorization(h string) (authorization, bool) {
	var a authorization
	algo, rest, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || algo != signAlgorithm {
		return a, false
	}
	var credential, signed string
	for part := range strings.SplitSeq(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return a, false
		}
		switch k {
		case "Credential":
			credential = v
		case "SignedHeaders":
			signed = v
		case "Signature":
			a.signature = v
		default:
			return a, false
		}
	}
	scope := strings.Split(credential, "/")
	if len(scope) != 4 || scope[0] == "" || scope[3] != signTerm || signed == "" || a.signature == "" {
		return a, false
	}
	a.secretID, a.date, a.service = scope[0], scope[1], scope[2]
	a.signedHeaders = strings.Split(signed, ";")
	hasHost, hasType := false, false
	for _, name := range a.signedHeaders {
		hasHost = hasHost || name == "host"
		hasType = hasType || name == "content-type"
	}
	return a, hasHost && hasType
}

// verifySignature checks the request's TC3-HMAC-SHA256 signature, its key (one of the accounts')
// and its timestamp, and returns the service of its credential scope (signService or tatService):
// the simulator serves both APIs on one endpoint, so the scope says which API the call is for.
func (s *Server) verifySignature(r *http.Request, body []byte, now time.Time) (string, *apiError) {
	raw := r.Header.Get("Authorization")
	if raw == "" {
		return "", errf("AuthFailure.InvalidAuthorization", "The Authorization header is missing.")
	}
	a, ok := parseAuthorization(raw)
	if !ok || (a.service != signService && a.service != tatService) {
		return "", errf("AuthFailure.InvalidAuthorization",
			"The Authorization header is not a valid TC3-HMAC-SHA256 authorization for service cvm or tat.")
	}
	secretKey, known := s.keys[a.secretID]
	if !known {
		return "", errf("AuthFailure.SecretIdNotFound", "The SecretId is not found, please ensure that your SecretId is correct.")
	}
	rawTS := r.Header.Get("X-TC-Timestamp")
	if rawTS == "" {
		return "", errf("MissingParameter", "The request is missing the required header X-TC-Timestamp.")
	}
	ts, err := strconv.ParseInt(rawTS, 10, 64)
	if err != nil {
		return "", errf("InvalidParameterValue", "X-TC-Timestamp must be unix seconds.")
	}
	signedAt := time.Unix(ts, 0)
	if s.maxSkew >= 0 && (now.Sub(signedAt) > s.maxSkew || signedAt.Sub(now) > s.maxSkew) {
		return "", errf("AuthFailure.SignatureExpire",
			"Signature expired, timestamp is more than %s away from the server time "+
				"(cvmsim: set Options.MaxClockSkew < 0 to drive the simulator with a fake clock).", s.maxSkew)
	}
	hashedPayload := sha256Hex(body)
	if r.Header.Get("X-TC-Content-SHA256") == "UNSIGNED-PAYLOAD" {
		hashedPayload = sha256Hex([]byte("UNSIGNED-PAYLOAD"))
	}
	var canonicalHeaders strings.Builder
	for _, name := range a.signedHeaders {
		value := r.Header.Get(name)
		if name == "host" {
			value = r.Host
		}
		canonicalHeaders.WriteString(name + ":" + strings.ToLower(strings.TrimSpace(value)) + "\n")
	}
	want := tc3Signature(secretKey, a.service, r.Method, canonicalHeaders.String(),
		strings.Join(a.signedHeaders, ";"), hashedPayload, ts)
	if a.date != signDate(ts) || !hmac.Equal([]byte(want), []byte(a.signature)) {
		return "", errf("AuthFailure.SignatureFailure",
			"The provided credentials could not be validated. Please check your signature is correct.")
	}
	return a.service, nil
}

// tc3Signature computes the hex signature the SDK computes for a request to service with path "/"
// and an empty query (every POST).
func tc3Signature(secretKey, service, method, canonicalHeaders, signedHeaders, hashedPayload string, ts int64) string {
	canonicalRequest := strings.Join([]string{method, "/", "", canonicalHeaders, signedHeaders, hashedPayload}, "\n")
	date := signDate(ts)
	scope := date + "/" + service + "/" + signTerm
	stringToSign := signAlgorithm + "\n" + strconv.FormatInt(ts, 10) + "\n" + scope + "\n" +
		sha256Hex([]byte(canonicalRequest))
	key := hmacSHA256([]byte("TC3"+secretKey), date)
	key = hmacSHA256(key, service)
	key = hmacSHA256(key, signTerm)
	return hex.EncodeToString(hmacSHA256(key, stringToSign))
}

// authorizationHeader builds the Authorization header a correct client sends for a JSON POST of
// the CVM API to host; tests use it to hand-craft requests.
func authorizationHeader(secretID, secretKey, host string, body []byte, ts int64) string {
	return serviceAuthorizationHeader(signService, secretID, secretKey, host, body, ts)
}

// serviceAuthorizationHeader is authorizationHeader for service (signService or tatService).
func serviceAuthorizationHeader(service, secretID, secretKey, host string, body []byte, ts int64) string {
	headers := "content-type:application/json\nhost:" + host + "\n"
	sig := tc3Signature(secretKey, service, http.MethodPost, headers, "content-type;host", sha256Hex(body), ts)
	return signAlgorithm + " Credential=" + secretID + "/" + signDate(ts) + "/" + service + "/" + signTerm +
		", SignedHeaders=content-type;host, Signature=" + sig
}

func signDate(ts int64) string {
	return time.Unix(ts, 0).UTC().Format(time.DateOnly)
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

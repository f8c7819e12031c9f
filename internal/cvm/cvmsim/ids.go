package cvmsim

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
)

const idAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

// newUUID returns a random (version 4) UUID, the shape of the API's RequestIds.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// newResourceID returns prefix + 8 random lowercase letters and digits, e.g. "img-1a2b3c4d".
func newResourceID(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	out := []byte(prefix)
	for _, c := range b {
		out = append(out, idAlphabet[int(c)%len(idAlphabet)])
	}
	return string(out)
}

// randomSeed returns a random non-zero seed for the fault source.
func randomSeed() int64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	if s := int64(binary.LittleEndian.Uint64(b[:])); s != 0 {
		return s
	}
	return 1
}

package bench

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
)

// imagerPackage is the imager command the scale benchmark runs.
const imagerPackage = "github.com/imager-dev/imager/cmd/imager"

// BuildImager builds cmd/imager with the go tool into dir and returns the binary's path. It must
// run inside the imager module (the repository), as `go run ./cmd/imager-bench` and the tests do.
func BuildImager(ctx context.Context, dir string) (string, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		// Under `go run` and `go test` the toolchain that built this binary is at hand.
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(dir, "imager")
	out, err := exec.CommandContext(ctx, gobin, "build", "-o", bin, imagerPackage).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build %s (run inside the imager repository, or give the binary): %w: %s", imagerPackage, err, out)
	}
	return bin, nil
}

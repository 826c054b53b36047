package upload

import (
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"whisperd/gateway/internal/apierr"
)

// A full disk while spooling is 507 Insufficient Storage, RESOURCE_EXHAUSTED, and says so.
func TestDiskFullWhileSpoolingIs507(t *testing.T) {
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	defer full.Close()
	err = spoolPart(full, strings.NewReader(strings.Repeat("a", 3*ChunkSize)))
	var p apierr.Problem
	if !errors.As(err, &p) || p.HTTPStatus != http.StatusInsufficientStorage || p.Code != codes.ResourceExhausted ||
		!strings.Contains(p.Message, "ran out of disk space") || !strings.Contains(p.Message, "no space left on device") {
		t.Fatalf("got %#v", err)
	}
}

// A client that breaks off is a 400 (its read failed), not a disk problem.
func TestBrokenUploadWhileSpoolingIs400(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "spool")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = spoolPart(f, &failing{})
	var p apierr.Problem
	if !errors.As(err, &p) || p.HTTPStatus != http.StatusBadRequest || !strings.Contains(p.Message, "reading the upload") {
		t.Fatalf("got %#v", err)
	}
}

type failing struct{ n int }

func (f *failing) Read(b []byte) (int, error) {
	if f.n++; f.n > 2 {
		return 0, errors.New("unexpected EOF")
	}
	return copy(b, "data"), nil
}

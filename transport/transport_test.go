package transport

import (
	"errors"
	"fmt"
	"testing"
)

func TestPermanent(t *testing.T) {
	a, b := Permanent("host key changed"), Permanent("host key changed")
	err := fmt.Errorf("connecting: %w", a)
	if !errors.Is(err, ErrPermanent) || !errors.Is(err, a) {
		t.Errorf("%v is not ErrPermanent and its own sentinel", err)
	}
	if errors.Is(err, b) {
		t.Error("two Permanent sentinels with the same text are the same error")
	}
	if err.Error() != "connecting: host key changed" {
		t.Errorf("err = %q", err)
	}
	if errors.Is(errors.New("timeout"), ErrPermanent) {
		t.Error("a plain error is permanent")
	}
}

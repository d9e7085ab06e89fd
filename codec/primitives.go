package codec

import (
	"encoding/binary"
	"fmt"
)

// appendString appends s with its length in front.
func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// appendStrings appends a counted list of length-prefixed strings.
func appendStrings(b []byte, ss []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(ss)))
	for _, s := range ss {
		b = appendString(b, s)
	}
	return b
}

// decoder reads the primitives above from buf. The first error sticks and
// every later read returns zero values, so callers check err once at the end.
type decoder struct {
	buf []byte
	err error
}

// uvarint reads a varint-encoded unsigned integer.
func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

// count reads a length that must not exceed the bytes left, so a corrupt
// count cannot make the caller allocate more than the input's size.
func (d *decoder) count() int {
	n := d.uvarint()
	if n > uint64(len(d.buf)) {
		d.fail("count %d exceeds input", n)
		return 0
	}
	return int(n)
}

// bytes reads a length-prefixed byte string, as a sub-slice of the input
// (no copy).
func (d *decoder) bytes() []byte {
	n := d.count()
	if d.err != nil {
		return nil
	}
	b := d.buf[:n:n]
	d.buf = d.buf[n:]
	return b
}

// strings reads a count, then that many length-prefixed strings.
func (d *decoder) strings() []string {
	n := d.count()
	ss := make([]string, 0, n)
	for ; n > 0 && d.err == nil; n-- {
		ss = append(ss, string(d.bytes()))
	}
	return ss
}

// rest takes every byte left: a field that ends its record needs no length.
func (d *decoder) rest() []byte {
	b := d.buf
	d.buf = nil
	return b
}

// fail records the first error, as ErrCorrupt with what was wrong.
func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
	}
}

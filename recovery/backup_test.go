package recovery

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"testing"

	"raftkv/codec"
	"raftkv/keyspace"
	"raftkv/membership"
)

// backupTestFile is a small snapshot file, with its header and the
// snapshot bytes it holds.
func backupTestFile(t *testing.T) ([]byte, backupHeader, []byte) {
	t.Helper()
	kv := keyspace.New()
	kv.Set("a", keyspace.Value{Data: "1", Version: keyspace.Version{CreateIndex: 4, ModIndex: 7}})
	kv.Set("b/c", keyspace.Value{Data: strings.Repeat("x", 300), Version: keyspace.Version{CreateIndex: 5, ModIndex: 5}})
	st := codec.State{
		Members: membership.NewTable([]membership.Member{{ID: 1, PeerURLs: []string{"http://127.0.0.1:2380"}}}, []uint64{2}),
		Keys:    kv,
	}
	data := st.Encode()
	hd := backupHeader{index: 7, term: 2, clusterID: 0xdd4d2f75ed37099c, memberID: 1}
	var file bytes.Buffer
	if err := writeBackup(&file, hd, data); err != nil {
		t.Fatal(err)
	}
	if int64(file.Len()) != backupSize(len(data)) {
		t.Fatalf("file is %d bytes, backupSize says %d", file.Len(), backupSize(len(data)))
	}
	return file.Bytes(), hd, data
}

// TestBackupFileRefusesDamage proves that parseBackup returns exactly the
// header and snapshot writeBackup wrote, and refuses the file cut at every
// length (as truncated) and with any one byte changed: restore must never
// write a data dir from less than the whole copy.
func TestBackupFileRefusesDamage(t *testing.T) {
	file, hd, data := backupTestFile(t)
	gotHeader, gotData, err := parseBackup(file)
	if err != nil || gotHeader != hd || !bytes.Equal(gotData, data) {
		t.Fatalf("parseBackup of an intact file: %+v, %d bytes, %v; want %+v, %d bytes", gotHeader, len(gotData), err, hd, len(data))
	}
	for n := range len(file) {
		_, _, err := parseBackup(file[:n])
		if !errors.Is(err, ErrBadBackup) || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("parseBackup of the first %d of %d bytes: %v, want a truncated file", n, len(file), err)
		}
	}
	for i := range file {
		damaged := slices.Clone(file)
		damaged[i] ^= 0x20
		_, _, err := parseBackup(damaged)
		if !errors.Is(err, ErrBadBackup) {
			t.Fatalf("parseBackup with byte %d changed: %v, want ErrBadBackup", i, err)
		}
		if i >= backupHeaderSize && !strings.Contains(err.Error(), "corrupt") {
			t.Fatalf("parseBackup with byte %d (after the header) changed: %v, want a checksum mismatch", i, err)
		}
	}
	if _, _, err := parseBackup(append(slices.Clone(file), 0)); !errors.Is(err, ErrBadBackup) {
		t.Fatalf("parseBackup with a byte appended: %v, want ErrBadBackup", err)
	}
	// A file whose checksum holds but whose header says the snapshot is
	// shorter than what it holds is refused too.
	short := slices.Clone(file)
	binary.BigEndian.PutUint64(short[backupHeaderSize-8:], uint64(len(data)-1))
	sum := sha256.Sum256(short[:len(short)-backupTrailerSize])
	copy(short[len(short)-backupTrailerSize:], sum[:])
	if _, _, err := parseBackup(short); !errors.Is(err, ErrBadBackup) {
		t.Fatalf("parseBackup of a file longer than its header says: %v, want ErrBadBackup", err)
	}
}

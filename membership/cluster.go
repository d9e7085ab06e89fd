package membership

import (
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// A cluster's identity. rafthttp stamps every peer request with the sender's
// cluster ID and refuses one whose ID is not its own, so that two clusters
// whose peer URLs overlap (a typo in --cluster, a host reused for a new
// cluster) never mix their raft messages: member 2 of one cluster would
// otherwise take member 1 of another for its own leader. As in etcd, the ID
// is derived from the initial membership and a token (etcd's
// --initial-cluster-token), recorded in the WAL when a member first starts,
// and learned from the cluster by a member that joins it later.

// Errors in --cluster and --cluster-token.
var (
	ErrBadCluster      = errors.New("bad --cluster")
	ErrBadClusterToken = errors.New("bad --cluster-token")
)

const (
	// MaxMemberID is the highest member id: a request id carries the
	// member id in 16 bits (etcd's idutil).
	MaxMemberID = 1<<16 - 1

	// DefaultClusterToken is --cluster-token's default. Two clusters that
	// keep it are still told apart by their members' peer URLs; a distinct
	// token also tells apart two clusters started on the same URLs one
	// after the other.
	DefaultClusterToken = "raftkv-cluster"

	// maxClusterTokenBytes bounds --cluster-token, which is logged.
	maxClusterTokenBytes = 256
)

// CheckIDInCluster refuses an --id out of range, or one --cluster gives
// no peer URL for.
func CheckIDInCluster(id uint64, cluster map[uint64]string) error {
	if id < 1 || id > MaxMemberID {
		return fmt.Errorf("--id %d: must be 1 to %d", id, MaxMemberID)
	}
	if _, ok := cluster[id]; !ok {
		return fmt.Errorf("--id %d: --cluster has no peer URL for member %d (give it as %d=URL)", id, id, id)
	}
	return nil
}

// ParseCluster reads --cluster, in one of two forms. Positional peer URLs,
// member i's the i-th ("http://a:2379,http://b:2379"), are how the Procfile
// starts a fixed cluster. id=URL entries ("1=http://a:2379,4=http://b:2379"),
// etcd's --initial-cluster form, name ids that are not positions: the
// members of a cluster that has since changed, or a joining member, which
// lists only itself (see join.Joined). The result maps member id to its
// normalised peer URL; no id and no URL may appear twice.
func ParseCluster(s string) (map[uint64]string, error) {
	entries := strings.Split(s, ",")
	cluster := make(map[uint64]string, len(entries))
	named := 0
	for i, e := range entries {
		// A URL has "/" before any "=", so an entry with no "/" before its
		// first "=" names its id.
		before, after, ok := strings.Cut(e, "=")
		id, u := uint64(i+1), e
		if ok && !strings.Contains(before, "/") {
			named++
			n, err := strconv.ParseUint(before, 10, 64)
			if err != nil || n < 1 || n > MaxMemberID {
				return nil, fmt.Errorf("%w: entry %q: the member id must be 1 to %d", ErrBadCluster, e, MaxMemberID)
			}
			id, u = n, after
		}
		if id > MaxMemberID {
			return nil, fmt.Errorf("%w: more than %d positional entries; member ids go up to %d", ErrBadCluster, MaxMemberID, MaxMemberID)
		}
		if _, dup := cluster[id]; dup {
			return nil, fmt.Errorf("%w: member id %d is listed twice", ErrBadCluster, id)
		}
		n, err := NormalizeURL(u)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadCluster, err)
		}
		for other, v := range cluster {
			if v == n {
				return nil, fmt.Errorf("%w: %s is listed twice, for members %d and %d", ErrBadCluster, n, other, id)
			}
		}
		cluster[id] = n
	}
	if named != 0 && named != len(entries) {
		return nil, fmt.Errorf("%w: %q mixes id=URL entries with positional ones; use one form", ErrBadCluster, s)
	}
	return cluster, nil
}

// PositionalCluster is the cluster whose member i has the i-th of urls as
// its peer URL: --cluster's positional form.
func PositionalCluster(urls []string) map[uint64]string {
	cluster := make(map[uint64]string, len(urls))
	for i, u := range urls {
		cluster[uint64(i+1)] = u
	}
	return cluster
}

// CheckClusterToken accepts a --cluster-token that logs as one readable
// word: 1 to maxClusterTokenBytes of printable UTF-8, without white space.
func CheckClusterToken(token string) error {
	switch {
	case token == "" || len(token) > maxClusterTokenBytes:
		return fmt.Errorf("%w: must be 1 to %d bytes", ErrBadClusterToken, maxClusterTokenBytes)
	case !utf8.ValidString(token):
		return fmt.Errorf("%w %q: not UTF-8", ErrBadClusterToken, token)
	}
	for _, r := range token {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return fmt.Errorf("%w %q: only printable characters, no white space", ErrBadClusterToken, token)
		}
	}
	return nil
}

// DeriveClusterID is the ID of a cluster whose initial members are cluster
// (peer URL by member id), started with token. It follows etcd's genID:
// the first 8 bytes of a SHA-1 over the members in id order. etcd derives
// each member's id from its peer URLs and the token and hashes those ids;
// raftkv's member ids are given, so it hashes each id with its peer URL,
// and then the token. Every member of a new cluster computes the same ID
// from the same --cluster and --cluster-token, however they order or spell
// the entries (ParseCluster normalises the URLs).
func DeriveClusterID(cluster map[uint64]string, token string) uint64 {
	h := sha1.New()
	for _, id := range slices.Sorted(maps.Keys(cluster)) {
		h.Write(binary.BigEndian.AppendUint64(nil, id))
		io.WriteString(h, cluster[id])
		h.Write([]byte{0}) // a normalised URL holds no NUL: it ends the URL
	}
	io.WriteString(h, token)
	return binary.BigEndian.Uint64(h.Sum(nil)[:8])
}

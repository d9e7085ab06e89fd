package main

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

// Errors in --cluster, --cluster-token and the WAL metadata.
var (
	ErrBadCluster      = errors.New("bad --cluster")
	ErrBadClusterToken = errors.New("bad --cluster-token")
	ErrBadWALMetadata  = errors.New("unreadable WAL metadata")
)

const (
	// defaultClusterToken is --cluster-token's default. Two clusters that
	// keep it are still told apart by their members' peer URLs; a distinct
	// token also tells apart two clusters started on the same URLs one
	// after the other.
	defaultClusterToken = "raftkv-cluster"

	// maxClusterTokenBytes bounds --cluster-token, which is logged.
	maxClusterTokenBytes = 256

	// legacyClusterID is the ID every raftkv cluster used before IDs were
	// derived. A WAL whose metadata holds only the member id was written
	// by such a member, and its cluster keeps this ID.
	legacyClusterID = 0x1000

	// clusterIDHeader carries the cluster ID on every client API answer,
	// as etcd sets X-Etcd-Cluster-ID on its own: a joining member learns
	// from it which cluster it joined.
	clusterIDHeader = "X-Raftkv-Cluster-Id"
)

// checkIDInCluster refuses an --id out of range, or one --cluster gives
// no peer URL for.
func checkIDInCluster(id uint64, cluster map[uint64]string) error {
	if id < 1 || id > maxMemberID {
		return fmt.Errorf("--id %d: must be 1 to %d", id, maxMemberID)
	}
	if _, ok := cluster[id]; !ok {
		return fmt.Errorf("--id %d: --cluster has no peer URL for member %d (give it as %d=URL)", id, id, id)
	}
	return nil
}

// parseCluster reads --cluster, in one of two forms. Positional peer URLs,
// member i's the i-th ("http://a:2379,http://b:2379"), are how the Procfile
// starts a fixed cluster. id=URL entries ("1=http://a:2379,4=http://b:2379"),
// etcd's --initial-cluster form, name ids that are not positions: the
// members of a cluster that has since changed, or a joining member, which
// lists only itself (see joinedCluster). The result maps member id to its
// normalised peer URL; no id and no URL may appear twice.
func parseCluster(s string) (map[uint64]string, error) {
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
			if err != nil || n < 1 || n > maxMemberID {
				return nil, fmt.Errorf("%w: entry %q: the member id must be 1 to %d", ErrBadCluster, e, maxMemberID)
			}
			id, u = n, after
		}
		if id > maxMemberID {
			return nil, fmt.Errorf("%w: more than %d positional entries; member ids go up to %d", ErrBadCluster, maxMemberID, maxMemberID)
		}
		if _, dup := cluster[id]; dup {
			return nil, fmt.Errorf("%w: member id %d is listed twice", ErrBadCluster, id)
		}
		n, err := normalizeURL(u)
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

// positionalCluster is the cluster whose member i has the i-th of urls as
// its peer URL: --cluster's positional form.
func positionalCluster(urls []string) map[uint64]string {
	cluster := make(map[uint64]string, len(urls))
	for i, u := range urls {
		cluster[uint64(i+1)] = u
	}
	return cluster
}

// checkClusterToken accepts a --cluster-token that logs as one readable
// word: 1 to maxClusterTokenBytes of printable UTF-8, without white space.
func checkClusterToken(token string) error {
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

// deriveClusterID is the ID of a cluster whose initial members are cluster
// (peer URL by member id), started with token. It follows etcd's genID:
// the first 8 bytes of a SHA-1 over the members in id order. etcd derives
// each member's id from its peer URLs and the token and hashes those ids;
// raftkv's member ids are given, so it hashes each id with its peer URL,
// and then the token. Every member of a new cluster computes the same ID
// from the same --cluster and --cluster-token, however they order or spell
// the entries (parseCluster normalises the URLs).
func deriveClusterID(cluster map[uint64]string, token string) uint64 {
	h := sha1.New()
	for _, id := range slices.Sorted(maps.Keys(cluster)) {
		h.Write(binary.BigEndian.AppendUint64(nil, id))
		io.WriteString(h, cluster[id])
		h.Write([]byte{0}) // a normalised URL holds no NUL: it ends the URL
	}
	io.WriteString(h, token)
	return binary.BigEndian.Uint64(h.Sum(nil)[:8])
}

// walMetadata is what a WAL records, once, when it is created: whose log it
// is. The member id keeps a data dir from ever being replayed as another
// member's; the cluster ID keeps a member in the cluster it first started
// in, whatever --cluster says when it restarts.
type walMetadata struct {
	memberID  uint64
	clusterID uint64
}

// encode writes the metadata as two uvarints, member id first. Data dirs
// from before cluster IDs hold the member id alone.
func (m walMetadata) encode() []byte {
	return binary.AppendUvarint(binary.AppendUvarint(nil, m.memberID), m.clusterID)
}

// decodeWALMetadata reads what encode wrote, or the member id alone, which
// a WAL written before cluster IDs holds: its cluster is legacyClusterID.
func decodeWALMetadata(b []byte) (walMetadata, error) {
	memberID, n := binary.Uvarint(b)
	if n <= 0 {
		return walMetadata{}, fmt.Errorf("%w: no member id in %x", ErrBadWALMetadata, b)
	}
	if n == len(b) {
		return walMetadata{memberID: memberID, clusterID: legacyClusterID}, nil
	}
	clusterID, m := binary.Uvarint(b[n:])
	if m <= 0 || n+m != len(b) {
		return walMetadata{}, fmt.Errorf("%w: no cluster ID after member %d in %x", ErrBadWALMetadata, memberID, b)
	}
	return walMetadata{memberID: memberID, clusterID: clusterID}, nil
}

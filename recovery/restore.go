package recovery

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"

	"raftkv/api"
	"raftkv/codec"
	"raftkv/datadir"
	"raftkv/membership"
)

// `raftkv restore` writes a new member's data dir from a snapshot
// file (Backups), as `etcdutl snapshot restore` does for etcd. Every
// member of the new cluster is restored from the same file with its own
// --id and the same --cluster, then started with the flags of a first
// start. The data dir holds a WAL, so startServer takes it for a restart:
// raft restarts from the snapshot, whose configuration is exactly the
// --cluster voters, at the file's raft index, and the kvstore loads the
// state with the member table rewritten to --cluster.
//
// The new cluster keeps the file's raft index, not 1 as etcd's restore
// starts its log: a key's version is the index of its last write (its
// ETag), so the log must go on above every version the state holds, or a
// new write could take a version an old one had and an If-Match meant for
// the old one would match it.
//
// What the data dir holds, as a first start followed by a snapshot would:
//
//	snap/<term>-<index>.snap  (16 hex digits each) the state, with the member table of --cluster
//	wal/                      metadata (member id, cluster ID), a record
//	                          of that snapshot, and a hard state whose
//	                          commit index is the snapshot's
//
// The cluster ID is derived from --cluster and --cluster-token, as a first
// start derives it, so it is the same on every member restored alike.

// ErrDataDirNotEmpty is a restore into a data dir that holds anything.
var ErrDataDirNotEmpty = errors.New("data dir not empty")

// restoreOptions is what `raftkv restore` is given.
type restoreOptions struct {
	snapshotFile string
	id           uint64
	cluster      map[uint64]string // peer URL by member id: the new cluster
	clusterToken string
	dataDir      string
}

// restored is what a restore wrote, for the line it prints.
type restored struct {
	index, term, clusterID uint64
	keys                   int
}

// Restore is `raftkv restore ARGS`: it returns the exit status, 0 once
// the data dir is written, 1 if the file or the data dir cannot be used, 2
// for bad flags, with one line on stderr.
func Restore(args []string, stdout, stderr io.Writer) int {
	opts, err := parseRestoreFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "raftkv restore: %s\n", api.OneLine(err))
		return 2
	}
	r, err := restoreDataDir(opts)
	if err != nil {
		fmt.Fprintf(stderr, "raftkv restore: %s\n", api.OneLine(err))
		return 1
	}
	fmt.Fprintf(stdout, "restored member %d of cluster %s into %s: %d keys at raft index %d; start it with the same --id and --cluster\n",
		opts.id, types.ID(r.clusterID), opts.dataDir, r.keys, r.index)
	return 0
}

// parseRestoreFlags reads and checks restore's flags, by the rules the
// server's own flags follow (config.Parse).
func parseRestoreFlags(args []string, usage io.Writer) (restoreOptions, error) {
	fs := flag.NewFlagSet("raftkv restore", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	snapshotFile := fs.String("snapshot", "", "the snapshot file to restore, from GET /snapshot")
	id := fs.Uint64("id", 1, "the member to write a data dir for: its position in a positional --cluster, or its id=URL entry")
	cluster := fs.String("cluster", "", "the new cluster's members, as the server's --cluster: comma-separated peer URLs by position, or id=URL entries")
	clusterToken := fs.String("cluster-token", membership.DefaultClusterToken, "goes into the new cluster's ID, as at a first start")
	dataDir := fs.String("data-dir", "", "the data dir to write, which must be empty or absent (default raftkv-<id>)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(usage)
			fs.Usage()
		}
		return restoreOptions{}, err
	}
	if fs.NArg() > 0 {
		return restoreOptions{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	opts := restoreOptions{snapshotFile: *snapshotFile, id: *id, clusterToken: *clusterToken, dataDir: *dataDir}
	if opts.snapshotFile == "" {
		return restoreOptions{}, errors.New("--snapshot FILE is required")
	}
	if *cluster == "" {
		return restoreOptions{}, errors.New("--cluster is required: the new cluster's members, the same for every member restored")
	}
	var err error
	if opts.cluster, err = membership.ParseCluster(*cluster); err != nil {
		return restoreOptions{}, err
	}
	if err := membership.CheckIDInCluster(opts.id, opts.cluster); err != nil {
		return restoreOptions{}, err
	}
	if err := membership.CheckClusterToken(opts.clusterToken); err != nil {
		return restoreOptions{}, err
	}
	if opts.dataDir == "" {
		opts.dataDir = fmt.Sprintf("raftkv-%d", opts.id)
	}
	return opts, nil
}

// restoreDataDir checks the snapshot file whole, then writes the data dir
// in a directory beside it and renames that into place, so that a restore
// that fails leaves no data dir a start would take for a member's.
func restoreDataDir(opts restoreOptions) (restored, error) {
	if err := checkEmptyDir(opts.dataDir); err != nil {
		return restored{}, err
	}
	file, err := os.ReadFile(opts.snapshotFile)
	if err != nil {
		return restored{}, fmt.Errorf("read snapshot file: %w", err)
	}
	hd, data, err := parseBackup(file)
	if err != nil {
		return restored{}, fmt.Errorf("%s: %w", opts.snapshotFile, err)
	}
	if hd.index == 0 {
		return restored{}, fmt.Errorf("%s: %w: it holds no raft index", opts.snapshotFile, ErrBadBackup)
	}
	st, err := codec.DecodeState(data)
	if err != nil {
		return restored{}, fmt.Errorf("%s: %w: the snapshot in it does not decode: %w", opts.snapshotFile, ErrBadBackup, err)
	}
	rewriteMembers(&st, opts.cluster)
	r := restored{index: hd.index, term: max(hd.term, 1), clusterID: membership.DeriveClusterID(opts.cluster, opts.clusterToken), keys: st.Keys.Len()}

	parent, base := filepath.Split(filepath.Clean(opts.dataDir))
	parent = filepath.Clean(parent)
	lg := zap.NewNop()
	if err := fileutil.TouchDirAll(lg, parent); err != nil {
		return restored{}, fmt.Errorf("create %s: %w", parent, err)
	}
	tmp, err := os.MkdirTemp(parent, "."+base+".restore-")
	if err != nil {
		return restored{}, fmt.Errorf("create a directory to restore into: %w", err)
	}
	if err := writeRestoredDir(lg, tmp, opts.id, r, st.Encode(), slices.Sorted(maps.Keys(opts.cluster))); err != nil {
		os.RemoveAll(tmp)
		return restored{}, err
	}
	if err := moveIntoPlace(tmp, opts.dataDir, parent); err != nil {
		os.RemoveAll(tmp)
		return restored{}, err
	}
	return r, nil
}

// checkEmptyDir refuses a data dir that holds anything: restore writes a
// new member, and a member's data, or anything else, is never overwritten.
func checkEmptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("data dir %s: %w", dir, err)
	case len(entries) > 0:
		return fmt.Errorf("%w: %s holds %s; restore writes a new member's data dir: give an empty or new --data-dir", ErrDataDirNotEmpty, dir, entries[0].Name())
	}
	return nil
}

// rewriteMembers makes the member table that of the new cluster: exactly
// the members of cluster, with their peer URLs and no client URL yet (each
// advertises its own when it starts). The old members that are not in the
// new cluster join the removed ids, so that a process of theirs still
// running is turned away if it reaches the new cluster; an id in the new
// cluster is no longer removed, or its peers would refuse its messages.
func rewriteMembers(st *codec.State, cluster map[uint64]string) {
	removed := st.Members.Removed()
	for _, m := range st.Members.List() {
		removed = append(removed, m.ID)
	}
	removed = slices.DeleteFunc(removed, func(id uint64) bool { _, stays := cluster[id]; return stays })
	var members []membership.Member
	for _, id := range slices.Sorted(maps.Keys(cluster)) {
		members = append(members, membership.Member{ID: id, PeerURLs: []string{cluster[id]}})
	}
	st.Members = membership.NewTable(members, removed)
}

// writeRestoredDir writes member id's data dir in dir: the snapshot file,
// then a WAL that records it and a hard state committing it, as
// the raft node's saveSnapshot and a WAL save would have. The WAL comes last: without one,
// a start would not take dir for a member's.
func writeRestoredDir(lg *zap.Logger, dir string, id uint64, r restored, data []byte, voters []uint64) error {
	confState := &raftpb.ConfState{Voters: voters}
	snapDir := datadir.SnapDir(dir)
	if err := fileutil.TouchDirAll(lg, snapDir); err != nil {
		return fmt.Errorf("create %s: %w", snapDir, err)
	}
	snapshot := &raftpb.Snapshot{
		Data:     data,
		Metadata: &raftpb.SnapshotMetadata{ConfState: confState, Index: new(r.index), Term: new(r.term)},
	}
	if err := snap.New(lg, snapDir).SaveSnap(snapshot); err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	w, err := wal.Create(lg, datadir.WALDir(dir), datadir.Metadata{MemberID: id, ClusterID: r.clusterID}.Encode())
	if err != nil {
		return fmt.Errorf("create WAL: %w", err)
	}
	if err := w.SaveSnapshot(&walpb.Snapshot{Index: new(r.index), Term: new(r.term), ConfState: confState}); err != nil {
		w.Close()
		return fmt.Errorf("save snapshot record to WAL: %w", err)
	}
	// A new term fsyncs.
	if err := w.Save(&raftpb.HardState{Term: new(r.term), Commit: new(r.index)}, nil); err != nil {
		w.Close()
		return fmt.Errorf("save hard state to WAL: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("close WAL: %w", err)
	}
	return nil
}

// moveIntoPlace renames the restored directory tmp to dataDir, which is
// absent or empty, and makes the rename durable.
func moveIntoPlace(tmp, dataDir, parent string) error {
	// os.Rename will not replace a directory, even an empty one.
	if err := os.Remove(dataDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s: %w", ErrDataDirNotEmpty, dataDir, err)
	}
	if err := os.Rename(tmp, dataDir); err != nil {
		return fmt.Errorf("move the restored data dir into place: %w", err)
	}
	d, err := fileutil.OpenDir(parent)
	if err != nil {
		return fmt.Errorf("open %s: %w", parent, err)
	}
	defer d.Close()
	if err := fileutil.Fsync(d); err != nil {
		return fmt.Errorf("sync %s: %w", parent, err)
	}
	return nil
}

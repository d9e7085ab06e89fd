package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"
)

// joinTimeout bounds how long a new member keeps asking to be added while
// the cluster has no leader or cannot be reached.
const joinTimeout = 30 * time.Second

// ErrJoinRefused is a join the cluster answered with a definite no.
var ErrJoinRefused = errors.New("join refused")

// requestJoin asks the cluster, through the member at cfg.join, to add this
// member (POST /members, following redirects). Raft adds a member before it
// runs: the new member starts empty and the leader brings it up to date. A
// 409 for this very id and peer URL means an earlier attempt got through.
func requestJoin(ctx context.Context, cfg config, lg *zap.Logger) error {
	body, err := json.Marshal(addMemberRequest{ID: cfg.id, PeerURL: cfg.peerURL(), ClientURL: cfg.clientURL})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	client := &http.Client{Timeout: cfg.requestTimeout + time.Second}
	membersURL := strings.TrimSuffix(cfg.join, "/") + "/members"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, membersURL, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err == nil {
			reason, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusCreated:
				lg.Info("joined the cluster", zap.String("via", cfg.join))
				return nil
			case resp.StatusCode == http.StatusConflict:
				return checkAlreadyMember(ctx, client, membersURL, cfg, strings.TrimSpace(string(reason)))
			case resp.StatusCode < 500:
				return fmt.Errorf("%w by %s: %s %s", ErrJoinRefused, cfg.join, resp.Status, strings.TrimSpace(string(reason)))
			}
			err = fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(reason)))
		}
		lg.Warn("join request failed; retrying", zap.String("via", cfg.join), zap.Error(err))
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return fmt.Errorf("join via %s: %w (last error: %v)", cfg.join, ctx.Err(), err)
		}
	}
}

// checkAlreadyMember accepts a 409 if the cluster already has this member
// with this peer URL, and returns the conflict otherwise.
func checkAlreadyMember(ctx context.Context, client *http.Client, membersURL string, cfg config, conflict string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, membersURL, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("join via %s: %s, and listing members failed: %w", cfg.join, conflict, err)
	}
	defer resp.Body.Close()
	var members []member
	if err := json.NewDecoder(resp.Body).Decode(&members); err != nil {
		return fmt.Errorf("join via %s: %s, and the member list is unreadable: %w", cfg.join, conflict, err)
	}
	for _, m := range members {
		if m.ID == cfg.id && len(m.PeerURLs) == 1 && sameURL(m.PeerURLs[0], cfg.peerURL()) {
			return nil
		}
	}
	return fmt.Errorf("%w by %s: %s", ErrJoinRefused, cfg.join, conflict)
}

package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"
)

// server is a webhook process of the benchmark (rrguard or the bare webhook).
type server struct {
	name  string
	cmd   *exec.Cmd
	pprof string
}

// httpReady is ready once GET url answers 200 (rrguard's /readyz).
func httpReady(url string) func() error {
	return func() error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return nil
	}
}

// tlsReady is ready once addr accepts a TLS handshake (the bare webhook has no probe).
func tlsReady(addr string) func() error {
	return func() error {
		conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // readiness only
		if err == nil {
			conn.Close()
		}
		return err
	}
}

// start runs bin with args, its output appended to bin + ".log", and waits until ready says it
// serves.
func start(ctx context.Context, name, bin string, env []string, ready func() error, pprof string, args ...string) (*server, error) {
	s := &server{name: name, pprof: pprof}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Env = append(os.Environ(), env...)
	// Dies with the benchmark, however it ends.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logFile, err := os.OpenFile(bin+".log", os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child keeps its own descriptor
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		err := ready()
		if err == nil {
			return s, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.stop()
			return nil, fmt.Errorf("%s not ready within 3 minutes (last: %v)", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var heapAlloc = regexp.MustCompile(`(?m)^# HeapAlloc = (\d+)$`)

// liveHeapMB forces a garbage collection in the process and returns the heap left allocated
// right after it: pprof's heap?gc=1&debug=1 collects, then prints the runtime's MemStats.
func (s *server) liveHeapMB() (float64, error) {
	resp, err := http.Get("http://" + s.pprof + "/debug/pprof/heap?gc=1&debug=1")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	m := heapAlloc.FindSubmatch(body)
	if m == nil {
		return 0, fmt.Errorf("%s: no HeapAlloc in the heap profile", s.name)
	}
	n, _ := strconv.ParseFloat(string(m[1]), 64)
	return n / (1 << 20), nil
}

func (s *server) pid() int { return s.cmd.Process.Pid }

func (s *server) stop() {
	_ = s.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
}

// freeAddr is a free loopback address.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// build compiles a package of this module (root: the checkout) into dir.
func build(root, dir, pkg, name string) (string, error) {
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build %s: %w", pkg, err)
	}
	return out, nil
}

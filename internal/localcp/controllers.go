package localcp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// ErrNoControllerManager: the testbin folder has no kube-controller-manager (`make testbin` builds
// it beside kube-apiserver).
var ErrNoControllerManager = errors.New("no kube-controller-manager in the testbin folder: run make testbin")

// controllerManagerReady bounds the wait for the controller manager's /healthz.
const controllerManagerReady = time.Minute

// startControllers runs kube-controller-manager of the same release as the API server, with only
// the controllers named (kube-controller-manager's --controllers, e.g. "job"), no leader election
// and its own admin credentials, until Stop. It returns once its /healthz answers.
func (e *Env) startControllers(controllers []string) error {
	stop, err := runControllerManager(e, controllers)
	if err != nil {
		return err
	}
	e.controllers, e.stopControllers = controllers, stop
	e.OnStop(func() error { return e.stopControllers() })
	return nil
}

// RestartControllers starts the controller manager afresh. After the API server restarted
// several times within two minutes, client-go's reflectors in a long-running controller wait
// 30 to 60 s before they list again (their backoff resets only after two quiet minutes): a test
// that restarts the API server often and times what a controller does next restarts it too.
func (e *Env) RestartControllers() error {
	if e.stopControllers == nil {
		return nil
	}
	if err := e.stopControllers(); err != nil {
		return err
	}
	stop, err := runControllerManager(e, e.controllers)
	if err != nil {
		e.stopControllers = func() error { return nil }
		return err
	}
	e.stopControllers = stop
	return nil
}

// runControllerManager starts kube-controller-manager (startControllers) and returns its stop.
func runControllerManager(e *Env, controllers []string) (func() error, error) {
	bin := filepath.Join(BinDir(), "kube-controller-manager")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("%w (looked in %s)", ErrNoControllerManager, BinDir())
	}
	dir, err := os.MkdirTemp("", "rrguard-controllers-")
	if err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	port, err := freePort()
	var log *os.File
	if err == nil {
		err = e.WriteKubeconfig(kubeconfig)
	}
	if err == nil {
		log, err = os.Create(filepath.Join(dir, "kube-controller-manager.log"))
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	cmd := exec.Command(bin,
		"--kubeconfig="+kubeconfig, "--authentication-kubeconfig="+kubeconfig, "--authorization-kubeconfig="+kubeconfig,
		"--controllers="+strings.Join(controllers, ","), "--leader-elect=false",
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", port), "--cert-dir="+dir,
		// The controllers act with the controller manager's own credentials: no service account
		// tokens to mint, so no token controller to run.
		"--use-service-account-credentials=false")
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group: a Ctrl-C meant for the tests must not kill it before Stop.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		log.Close()
		_ = os.RemoveAll(dir)
		return nil, err
	}
	log.Close()
	e.reaper.guardChildren()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() error {
		Terminate(cmd.Process, exited)
		return os.RemoveAll(dir)
	}
	// Its serving certificate is self-signed, made at start; only its health is read.
	insecure := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // health probe only
	err = wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, controllerManagerReady, true, func(context.Context) (bool, error) {
		select {
		case err := <-exited:
			exited <- err
			return false, fmt.Errorf("kube-controller-manager exited: %v", err)
		default:
		}
		resp, err := insecure.Get(fmt.Sprintf("https://127.0.0.1:%d/healthz", port))
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		out, _ := os.ReadFile(filepath.Join(dir, "kube-controller-manager.log"))
		_ = stop()
		return nil, fmt.Errorf("kube-controller-manager not healthy: %w\n%s", err, tail(out, 4000))
	}
	return stop, nil
}

// terminateGrace is how long a child process has to exit after SIGTERM before it is killed.
const terminateGrace = 10 * time.Second

// Terminate stops a child process: SIGTERM, then SIGKILL if it has not exited (a receive from
// exited, which the caller's cmd.Wait feeds) within terminateGrace.
func Terminate(p *os.Process, exited <-chan error) {
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(terminateGrace):
		_ = p.Kill()
		<-exited
	}
}

// freePort is a loopback port free a moment ago (kube-controller-manager binds it itself).
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tail is the last n bytes of b.
func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

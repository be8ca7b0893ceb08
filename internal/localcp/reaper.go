package localcp

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// reaper is a shell process that kills the control plane when the test process dies without
// stopping it (a panic, `go test -timeout`, a kill): it reads from a pipe that only this process
// holds open, and the kernel closes the pipe on death, however it comes.
type reaper struct {
	cmd   *exec.Cmd
	w     *os.File
	known map[int]bool
}

func startReaper() (*reaper, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	// One line per PID to guard; at EOF, kill them all. A line "stop" ends it without killing.
	script := `pids=""; while read -r l; do [ "$l" = stop ] && exit 0; pids="$pids $l"; done; [ -n "$pids" ] && kill -9 $pids 2>/dev/null; exit 0`
	cmd := exec.Command("sh", "-c", script)
	cmd.Stdin = r
	// Its own process group: a Ctrl-C meant for the tests must not kill it before the others.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, err
	}
	r.Close()
	return &reaper{cmd: cmd, w: w, known: map[int]bool{cmd.Process.Pid: true}}, nil
}

// guardChildren tells the reaper about every child process started since it was.
func (p *reaper) guardChildren() {
	for _, pid := range children(os.Getpid()) {
		if !p.known[pid] {
			p.known[pid] = true
			_, _ = p.w.WriteString(strconv.Itoa(pid) + "\n")
		}
	}
}

func (p *reaper) stop() {
	_, _ = p.w.WriteString("stop\n")
	_ = p.w.Close()
	_ = p.cmd.Wait()
}

func children(pid int) []int {
	tasks, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "task", "*", "children"))
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

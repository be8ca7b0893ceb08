package testenv

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's CPU times (100 on Linux).
const clockTicks = 100

// statFields are the fields of /proc/<pid>/stat after the command name, which may hold spaces.
func statFields(pid int) (comm string, fields []string, err error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return "", nil, err
	}
	s := string(b)
	open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closing < open || closing+2 > len(s) {
		return "", nil, fmt.Errorf("cannot parse /proc/%d/stat", pid)
	}
	return s[open+1 : closing], strings.Fields(s[closing+2:]), nil
}

// CPUSeconds is the user+system CPU a process has used, from /proc: benchmarks report CPU per
// operation for each process.
func CPUSeconds(pid int) (float64, error) {
	_, f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	if len(f) < 13 {
		return 0, fmt.Errorf("cannot parse /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("cannot parse /proc/%d/stat", pid)
	}
	return float64(utime+stime) / clockTicks, nil
}

// RSSBytes is a process's resident set, from /proc; 0 when it cannot be read.
func RSSBytes(pid int) int64 { return procStatusBytes(pid, "VmRSS:") }

// PeakRSSBytes is the largest resident set a process has had (the kernel's high-water mark,
// VmHWM): what a memory limit must hold, start-up included.
func PeakRSSBytes(pid int) int64 { return procStatusBytes(pid, "VmHWM:") }

func procStatusBytes(pid int, field string) int64 {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// ChildPID finds the child of this process running the named command (the control plane's
// kube-apiserver and etcd).
func ChildPID(comm string) (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	self := strconv.Itoa(os.Getpid())
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		name, f, err := statFields(pid)
		if err == nil && len(f) > 1 && f[1] == self && name == comm {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no child process %q", comm)
}

// ControlPlane finds this process's kube-apiserver and etcd children, and this process as "self".
func ControlPlane() (map[string]int, error) {
	out := map[string]int{"self": os.Getpid()}
	for _, name := range []string{"kube-apiserver", "etcd"} {
		pid, err := ChildPID(name)
		if err != nil {
			return nil, fmt.Errorf("control plane processes not found: %w", err)
		}
		out[name] = pid
	}
	return out, nil
}

// CPUMillis reads the user+system CPU of each process, in milliseconds; a process it cannot read
// is left out.
func CPUMillis(pids map[string]int) map[string]int64 {
	out := map[string]int64{}
	for name, pid := range pids {
		if s, err := CPUSeconds(pid); err == nil {
			out[name] = int64(math.Round(s * 1000))
		}
	}
	return out
}

// Parallel runs f(0..n-1) on workers goroutines and waits for all.
func Parallel(n, workers int, f func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				f(i)
			}
		}()
	}
	wg.Wait()
}

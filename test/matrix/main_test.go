package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every package whose tests start a control plane (testenv's Main) is a suite, so that make test-k8s
// runs it on every release: a package moved or added without its suite would be tested on the
// newest release only.
func TestEverySuiteIsListed(t *testing.T) {
	root := filepath.Join("..", "..")
	listed := map[string]bool{}
	for _, s := range Suites {
		listed[filepath.Clean(filepath.Join(s.dir, s.pkg))] = true
	}
	found := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "testenv."+"Main(") { // split: this file is no suite
			return nil
		}
		found++
		dir, _ := filepath.Rel(root, filepath.Dir(path))
		if !listed[dir] {
			t.Errorf("%s starts a control plane in its tests but is no suite of test/matrix", dir)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if found == 0 {
		t.Fatal("found no package whose tests start a control plane: the walk looked in the wrong place")
	}
}

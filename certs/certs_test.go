package certs

import (
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"
)

func TestServingCertVerifiesAgainstCA(t *testing.T) {
	b, err := Write(t.TempDir(), []string{"127.0.0.1", "rrguard.kubernaut-system.svc"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(b.Dir, CertFile), filepath.Join(b.Dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b.CAPEM) {
		t.Fatal("CA PEM does not parse")
	}
	for _, host := range []string{"127.0.0.1", "rrguard.kubernaut-system.svc"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host}); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "evil.example"}); err == nil {
		t.Error("certificate verified for a host it does not name")
	}
	if leaf.IsCA {
		t.Error("serving certificate is a CA")
	}
}

func TestNoHost(t *testing.T) {
	if _, err := Write(t.TempDir(), nil, time.Hour); err == nil {
		t.Fatal("no error without hosts")
	}
}

package kubernetes

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// apiClient is a client of the Kubernetes API: JSON over HTTPS, the
// credentials of a kubeconfig, a bound on concurrent calls, a rate limit on
// creates, and retries of what the server asks to retry (429, 5xx).
//
// rlmrun speaks the API itself rather than through client-go: linking
// client-go adds ~20 ms of package initialisation (its type registry) and
// ~22 ms to every rlmrun process start, and 38 MB to the binary (measured:
// `rlmrun version`, median of 80 runs) — and every rollout's agent is that
// binary. A provider needs six endpoints.
type apiClient struct {
	rc   *restConfig
	http *http.Client
	// upgrade is an HTTP/1.1 client for exec's WebSocket.
	upgrade *http.Client
	sem     chan struct{}
	creates *tokenBucket
	// requests counts the API requests made (for benchmarks and tests).
	requests countMap
	// throttled counts the answers that asked to slow down (429).
	throttled countMap
}

// countMap counts requests by kind.
type countMap struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *countMap) add(kind string) {
	c.mu.Lock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[kind]++
	c.mu.Unlock()
}

// snapshot returns the counts so far.
func (c *countMap) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for k, v := range c.n {
		out[k] = v
	}
	return out
}

// maxInFlight bounds the API calls a run makes at once (exec streams and
// watches aside, which live long).
const maxInFlight = 32

func newAPIClient(rc *restConfig, createQPS float64) *apiClient {
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSClientConfig:     rc.tls,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	up := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSClientConfig:     rc.tls.Clone(),
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
		TLSHandshakeTimeout: 10 * time.Second,
	}
	up.TLSClientConfig.NextProtos = []string{"http/1.1"}
	if createQPS <= 0 {
		createQPS = 20
	}
	return &apiClient{
		rc:      rc,
		http:    &http.Client{Transport: tr},
		upgrade: &http.Client{Transport: up},
		sem:     make(chan struct{}, maxInFlight),
		creates: newTokenBucket(createQPS, max(1, int(createQPS))),
	}
}

// statusError is the API's error answer (a Status object).
type statusError struct {
	Code    int
	Reason  string
	Message string
}

func (e *statusError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("Kubernetes API: HTTP %d %s", e.Code, e.Reason)
	}
	return fmt.Sprintf("Kubernetes API: %s (HTTP %d)", e.Message, e.Code)
}

func isNotFound(err error) bool {
	var se *statusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

func isConflict(err error) bool {
	var se *statusError
	return errors.As(err, &se) && se.Code == http.StatusConflict
}

// apiError reads an error answer.
func apiError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var st struct {
		Message string `json:"message"`
		Reason  string `json:"reason"`
	}
	se := &statusError{Code: resp.StatusCode}
	if json.Unmarshal(b, &st) == nil {
		se.Message, se.Reason = st.Message, st.Reason
	}
	if se.Message == "" {
		se.Message = strings.TrimSpace(string(b))
		if len(se.Message) > 500 {
			se.Message = se.Message[:500] + "..."
		}
	}
	return se
}

// request builds a request to path (which may carry a query).
func (a *apiClient) request(ctx context.Context, method, path string, body []byte) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.rc.server+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "rlmrun")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.rc.auth != nil {
		if err := a.rc.auth(req); err != nil {
			return nil, fmt.Errorf("credentials: %w", err)
		}
	}
	return req, nil
}

// maxRetries bounds the retries of one call the server asked to retry.
const maxRetries = 8

// do makes one API call, retrying 429 and 5xx answers (after Retry-After,
// else with exponential back-off), and decodes the answer into out.
func (a *apiClient) do(ctx context.Context, kind, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	if method == http.MethodPost {
		if err := a.creates.wait(ctx); err != nil {
			return err
		}
	}
	for attempt := 0; ; attempt++ {
		select {
		case a.sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		retry, err := a.once(ctx, kind, method, path, body, out)
		<-a.sem
		if err == nil || retry < 0 || attempt >= maxRetries || ctx.Err() != nil {
			return err
		}
		if retry == 0 {
			retry = backoff(attempt)
		}
		t := time.NewTimer(retry)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// once is one attempt; retry < 0 means do not retry, 0 back off, > 0 wait
// that long.
func (a *apiClient) once(ctx context.Context, kind, method, path string, body []byte, out any) (time.Duration, error) {
	req, err := a.request(ctx, method, path, body)
	if err != nil {
		return -1, err
	}
	a.requests.add(kind)
	resp, err := a.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 {
		if resp.StatusCode == http.StatusTooManyRequests {
			a.throttled.add(kind)
		}
		wait := time.Duration(0)
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
			wait = time.Duration(s) * time.Second
		}
		return wait, apiError(resp)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return -1, apiError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return -1, nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out); err != nil {
		return -1, fmt.Errorf("kubernetes API: %s %s: %w", method, path, err)
	}
	return -1, nil
}

// backoff is the wait before retry n+1: 200 ms doubling to 10 s, jittered.
func backoff(n int) time.Duration {
	d := 200 * time.Millisecond << min(n, 6)
	d = min(d, 10*time.Second)
	return d/2 + time.Duration(rand.Int64N(int64(d)/2+1))
}

// watch opens a watch (one long request) and hands each event to f until
// f says stop, the stream ends, or ctx is done.
func (a *apiClient) watch(ctx context.Context, path string, f func(eventType string, object json.RawMessage) (stop bool, err error)) error {
	req, err := a.request(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	a.requests.add("watch")
	resp, err := a.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return apiError(resp)
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var ev struct {
			Type   string          `json:"type"`
			Object json.RawMessage `json:"object"`
		}
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("watch ended: %w", err)
		}
		if ev.Type == "ERROR" {
			var st struct {
				Message string `json:"message"`
				Code    int    `json:"code"`
			}
			_ = json.Unmarshal(ev.Object, &st)
			return &statusError{Code: st.Code, Message: st.Message}
		}
		stop, err := f(ev.Type, ev.Object)
		if err != nil || stop {
			return err
		}
	}
}

// query encodes v as a query string.
func query(v url.Values) string {
	if len(v) == 0 {
		return ""
	}
	return "?" + v.Encode()
}

// tokenBucket limits a rate (creates per second) with a burst.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate float64, burst int) *tokenBucket {
	return &tokenBucket{rate: rate, burst: float64(burst), tokens: float64(burst), last: time.Now()}
}

// wait takes a token, waiting for one if need be.
func (b *tokenBucket) wait(ctx context.Context) error {
	for {
		b.mu.Lock()
		now := time.Now()
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
		b.last = now
		if b.tokens >= 1 {
			b.tokens--
			b.mu.Unlock()
			return nil
		}
		need := time.Duration((1 - b.tokens) / b.rate * float64(time.Second))
		b.mu.Unlock()
		t := time.NewTimer(need)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

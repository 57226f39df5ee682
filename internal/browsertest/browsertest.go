// Package browsertest drives Debian's headless chromium from tests, with
// chromedp: a browser per test, closed when the test ends, with the flags
// that keep it off this machine's closed network.
package browsertest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/rlmrun/rlmrun/internal/testbin"
)

// Path finds chromium: $RLMRUN_CHROMIUM, else /usr/bin/chromium (Debian's
// package, which scripts/test installs), else chromium or google-chrome on
// PATH.
func Path() string {
	if p := os.Getenv("RLMRUN_CHROMIUM"); p != "" {
		return p
	}
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// Start starts a headless browser for t and returns a context of a tab in
// it (skipping, or failing under RLMRUN_REQUIRE_ALL, without chromium).
func Start(t testing.TB, timeout time.Duration) (context.Context, context.CancelFunc) {
	t.Helper()
	path := Path()
	testbin.Need(t, path != "", "chromium (Debian package chromium)")
	opts := append([]chromedp.ExecAllocatorOption{},
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox, // tests run as root here; the page is the test's own file
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1280, 900),
	)
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	ctx, tcancel := context.WithTimeout(ctx, timeout)
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		tcancel()
		cancel()
		acancel()
		t.Fatalf("start chromium (%s): %v", path, err)
	}
	stop := func() {
		tcancel()
		cancel()
		acancel()
	}
	t.Cleanup(stop)
	return ctx, stop
}

// Open loads a page and waits until its body says data-ready="1" (the
// report's script sets it once the page is usable).
func Open(t testing.TB, ctx context.Context, url string) {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
	WaitVisible(t, ctx, `body[data-ready="1"]`)
}

// WaitVisible waits for an element (CSS selector) to be visible.
func WaitVisible(t testing.TB, ctx context.Context, sel string) {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(sel))); err != nil {
		t.Fatalf("wait for %s: %v", sel, err)
	}
}

// WaitFor polls a JavaScript condition until it holds.
func WaitFor(t testing.TB, ctx context.Context, cond string) {
	t.Helper()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](cond, chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
		t.Fatalf("wait for %s: %v", cond, err)
	}
}

// Eval evaluates a JavaScript expression in the page.
func Eval[T any](t testing.TB, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// Click clicks the element a CSS selector finds.
func Click(t testing.TB, ctx context.Context, sel string) {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(sel))); err != nil {
		t.Fatalf("click %s: %v", sel, err)
	}
}

// Shot saves a screenshot of the whole page as the test's artifact name
// (kept by go test -artifacts).
func Shot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if err := os.WriteFile(filepath.Join(t.ArtifactDir(), name), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

package integration

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cdpbrowser "github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/console"
)

// chromiumPath finds a Chromium or Chrome to drive. Without one the
// browser tests skip, except under CI=true, where they must run.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no Chromium on PATH (apt-get install chromium); the console's browser tests need it under CI")
	}
	t.Skip("no Chromium on PATH (apt-get install chromium)")
	return ""
}

// artifacts is where screenshots go: $WALHOOK_ARTIFACTS, else
// testdata/artifacts (ignored by git).
func artifacts(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("WALHOOK_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("testdata", "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// newBrowser starts headless Chromium for the test; tabs are opened on
// the returned context with newTab.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromiumPath(t)),
		chromedp.WindowSize(1280, 900), chromedp.DisableGPU, chromedp.Flag("disable-dev-shm-usage", true))
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(cancelAlloc)
	browserCtx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(cancelBrowser)
	if err := chromedp.Do(browserCtx); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	return browserCtx
}

// tab is one browser tab (its own sessionStorage, so its own sign-in)
// that records what it loads and every uncaught script error.
type tab struct {
	t   *testing.T
	ctx context.Context
	dir string

	mu         sync.Mutex
	loaded     map[network.RequestID]float64
	urls       []string
	exceptions []string
}

func newTab(t *testing.T, browser context.Context) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	t.Cleanup(cancel)
	tb := &tab{t: t, ctx: ctx, dir: artifacts(t), loaded: map[network.RequestID]float64{}}
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("open a tab: %v", err)
	}
	if err := chromedp.Listen(ctx, func(ev any) {
		tb.mu.Lock()
		defer tb.mu.Unlock()
		switch ev := ev.(type) {
		case *network.EventRequestWillBeSent:
			tb.urls = append(tb.urls, ev.Request.URL)
		case *network.EventLoadingFinished:
			tb.loaded[ev.RequestID] = ev.EncodedDataLength
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			msg := d.Text
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
			tb.exceptions = append(tb.exceptions, msg)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		tb.mu.Lock()
		defer tb.mu.Unlock()
		for _, e := range tb.exceptions {
			t.Errorf("uncaught script error in the console: %s", e)
		}
	})
	return tb
}

// do runs actions; a failure saves a screenshot and the page's text.
func (tb *tab) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	if err := chromedp.Do(tb.ctx, actions...); err != nil {
		tb.fail(what, err)
	}
}

// wait waits until the JavaScript expression holds, re-checking on every
// DOM change (the page's own updates are the events awaited).
func (tb *tab) wait(what, expr string) {
	tb.t.Helper()
	if _, err := chromedp.Run(tb.ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingMutation(), chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		tb.fail("waiting for "+what, err)
	}
}

func (tb *tab) eval(expr string) string {
	tb.t.Helper()
	v, err := chromedp.Run(tb.ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		tb.fail("evaluate "+expr, err)
	}
	return v
}

func (tb *tab) text(sel string) string {
	tb.t.Helper()
	return tb.eval(fmt.Sprintf(`(document.querySelector(%q) || {}).innerText || ""`, sel))
}

func (tb *tab) fail(what string, err error) {
	tb.t.Helper()
	tb.shot("failure-" + strings.NewReplacer(" ", "-", "/", "-").Replace(tb.t.Name()))
	body, _ := chromedp.Run(tb.ctx, chromedp.Evaluate[string](`document.body.innerText`))
	tb.t.Fatalf("%s: %v\npage text:\n%s", what, err, body)
}

// shot saves a full-page PNG under the artifacts folder.
func (tb *tab) shot(name string) { tb.save(name, chromedp.FullScreenshot(100)) }

// view saves what the window shows, for pages longer than a screen.
func (tb *tab) view(name string) { tb.save(name, chromedp.CaptureScreenshot()) }

func (tb *tab) save(name string, capture chromedp.Action[[]byte]) {
	tb.t.Helper()
	png, err := chromedp.Run(tb.ctx, capture)
	if err != nil {
		tb.t.Logf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(tb.dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		tb.t.Fatal(err)
	}
	tb.t.Logf("screenshot: %s", p)
}

// dismiss closes the toasts, so they do not cover a screenshot.
func (tb *tab) dismiss() {
	tb.t.Helper()
	tb.eval(`document.querySelectorAll(".toast").forEach(t => t.remove()), ""`)
}

// transferred is what the tab loaded since the last call, in bytes on the
// wire (headers included), and from where.
func (tb *tab) transferred() (total float64, urls []string) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	for _, n := range tb.loaded {
		total += n
	}
	urls = tb.urls
	tb.loaded, tb.urls = map[network.RequestID]float64{}, nil
	return total, urls
}

// go navigates inside the single-page app (no reload).
func (tb *tab) goTo(hash string) {
	tb.t.Helper()
	tb.eval(fmt.Sprintf(`location.hash = %q, ""`, hash))
}

// sinkRowLayout is where the cells of sink s's overview row are.
const sinkRowLayout = `JSON.stringify([...document.querySelectorAll('tr[data-sink="s"] > *')].map(c => { const r = c.getBoundingClientRect(); return [Math.round(r.left), Math.round(r.width), Math.round(r.height)] }))`

// The console, driven in Chromium against a running service: sign-in,
// live counts, a pull sink's message in flight and then delivered, a
// failing message and its redelivery, a backfill, the live tail,
// endpoints with masked secrets, errors, phone width and the dev sign-in
// link.
func TestConsole(t *testing.T) {
	browser := newBrowser(t)
	b := apiBundle(t, `CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY)`, "public.t")
	b.cfg.Sinks[0].Retry.MaxAge = config.Duration(300 * time.Millisecond)
	// A pull sink on a table of its own: its counts move only when the
	// test receives and acks.
	pull := config.Sink{Name: "p", Kind: config.KindPull, Tables: []string{"public.u"}}
	pull.ApplyDefaults()
	b.cfg.Sinks = append(b.cfg.Sinks, pull)
	var failing atomic.Bool
	b.recv.setRespond(func(r *request) int {
		if failing.Load() {
			return 500
		}
		return 200
	})
	e := startAPI(t, b)
	// The browser goes through a proxy, so the test can take the API away.
	target, err := url.Parse(e.base)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ErrorLog = log.New(io.Discard, "", 0) // aborted live tails are expected
	proxy := httptest.NewServer(rp)
	t.Cleanup(proxy.Close)
	base := proxy.URL

	tb := newTab(t, browser)
	if _, err := chromedp.Call(tb.ctx, network.SetCacheDisabled, network.SetCacheDisabledParams{CacheDisabled: true}); err != nil {
		t.Fatal(err)
	}

	// Sign in: a wrong token is refused with a clear message.
	tb.do("open the console", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#token")))
	tb.shot("console-signin")
	tb.do("sign in with a wrong token", chromedp.SendKeys(chromedp.CSS("#token"), "not-the-token"),
		chromedp.Click(chromedp.CSS(".signin button[type=submit]")))
	tb.wait("the refusal", `document.querySelector("#signin-error").innerText.includes("not accepted")`)
	if msg := tb.text("#signin-error"); !strings.Contains(msg, "401") {
		t.Errorf("wrong token message: %q", msg)
	}
	// By keyboard: the token field has the focus, Enter submits.
	if focused := tb.eval(`document.activeElement.id`); focused != "token" {
		t.Errorf("focus after a refused sign-in is on %q, not the token field", focused)
	}
	tb.do("sign in", chromedp.KeyEvent(apiToken+kb.Enter))
	tb.wait("the overview", `document.querySelector('tr[data-sink="s"] [data-count="delivered"]')?.innerText === "0"`)
	if strings.Contains(tb.eval(`location.href`), apiToken) {
		t.Errorf("the token is in the URL")
	}

	// Page weight: a fresh load of the overview, everything on the wire.
	tb.transferred()
	tb.do("reload", chromedp.Reload())
	tb.wait("the overview after a reload", `document.querySelector('tr[data-sink="s"] [data-count="delivered"]')?.innerText === "0" && document.querySelector('tr[data-source="hook"]') && document.querySelector('[data-replication="streaming"]')`)
	weight, urls := tb.transferred()
	t.Logf("overview page weight: %.0f bytes in %d requests", weight, len(urls))
	if weight > 300*1024 {
		t.Errorf("overview weighs %.0f bytes, over 300 KB", weight)
	}
	for _, u := range urls {
		if !strings.HasPrefix(u, base+"/") && !strings.HasPrefix(u, "data:") {
			t.Errorf("the console loads %s, not from walhook", u)
		}
	}
	if !strings.Contains(tb.text(`tr[data-source="hook"]`), e.base+"/api/webhook/hook") {
		t.Errorf("ingest URL of source hook not shown: %q", tb.text(`tr[data-source="hook"]`))
	}

	// The copy button puts the ingest URL on the clipboard.
	for _, name := range []string{"clipboard-read", "clipboard-write"} {
		if _, err := chromedp.CallBrowser(tb.ctx, cdpbrowser.SetPermission, cdpbrowser.SetPermissionParams{
			Permission: &cdpbrowser.PermissionDescriptor{Name: name}, Setting: cdpbrowser.PermissionSettingGranted, Origin: base}); err != nil {
			t.Fatal(err)
		}
	}
	tb.do("copy the ingest URL", chromedp.Click(chromedp.CSS(`tr[data-source="hook"] button`)))
	tb.wait("copied", `document.querySelector('tr[data-source="hook"] button').innerText === "Copied"`)
	if clip, err := chromedp.Run(tb.ctx, chromedp.Evaluate[string](`navigator.clipboard.readText()`, chromedp.EvalAwaitPromise)); err != nil || clip != e.base+"/api/webhook/hook" {
		t.Errorf("clipboard after Copy: %q, %v", clip, err)
	}

	// The status behind the chart and the replication card.
	st := decodeAs[map[string]any](t, e.must(t, 200, "GET", "/api/status", nil))
	if st["leading"] != true || st["replication"] != "streaming" || st["state_db"] != "ok" || st["lag_bytes"] == nil {
		t.Errorf("GET /api/status: %v", st)
	}
	if status, _ := e.call(t, "GET", "/api/status", nil, ""); status != 401 {
		t.Errorf("GET /api/status without a token: %d", status)
	}

	// Live counts: an INSERT shows up as delivered without a reload.
	b.exec(t, `INSERT INTO t VALUES (1, 'one')`)
	tb.wait("delivered count 1", `document.querySelector('tr[data-sink="s"] [data-count="delivered"]').innerText === "1"`)

	// A pull sink: listed as one, a received message is in flight until
	// it is acked, and then counts as delivered.
	if got := tb.text(`tr[data-sink="p"] [data-label="Endpoint"]`); got != "pull (consumers receive)" {
		t.Errorf("endpoint cell of the pull sink: %q", got)
	}
	b.exec(t, `INSERT INTO u VALUES (1)`)
	// Fewer than batch_size: no read ahead, so exactly one in flight.
	received := e.receive(t, "p", map[string]any{"wait": "10s", "batch_size": 10, "visibility_timeout": "10m"})
	if len(received) != 1 {
		t.Fatalf("receive from the pull sink: %+v", received)
	}
	tb.wait("the pull sink's message in flight", `document.querySelector('tr[data-sink="p"] [data-count="in_flight"]')?.innerText === "1"`)
	if got := tb.eval(`[...document.querySelectorAll('tr[data-sink="p"] [data-count]')].map(c => c.dataset.count + "=" + c.innerText).join(" ")`); got != "pending=0 in_flight=1 backing_off=0 failed=0 delivered=0" {
		t.Errorf("pull sink counts with a message received: %s", got)
	}
	tb.dismiss()
	tb.shot("console-overview-pull")
	e.must(t, 200, "POST", "/api/sinks/p/ack", map[string]any{"ack_ids": ackIDsOf(received)})
	tb.wait("the pull sink's message delivered", `document.querySelector('tr[data-sink="p"] [data-count="in_flight"]')?.innerText === "0" && document.querySelector('tr[data-sink="p"] [data-count="delivered"]')?.innerText === "1"`)
	tb.shot("console-overview-pull-acked")
	layout := tb.eval(sinkRowLayout)

	// Live tail.
	tb.goTo("#/tail?sink=s")
	tb.wait("the tail to connect", `document.querySelector('.conn')?.dataset.state === "live"`)
	b.exec(t, `INSERT INTO t VALUES (2, 'tail-me')`)
	tb.wait("the change in the tail", `[...document.querySelectorAll('table.tail tbody tr')].some(r => r.innerText.includes("tail-me"))`)
	tb.shot("console-tail")

	// Failing messages: more than a page of them; find one, read its
	// last error.
	failing.Store(true)
	b.exec(t, `INSERT INTO t VALUES (13, 'broken')`)
	b.exec(t, `INSERT INTO t SELECT g, 'bulk' FROM generate_series(100, 159) g`)
	tb.goTo("#/sinks/s/messages?state=failed")
	tb.wait("61 failed messages", `document.querySelector('.counts [data-count="failed"]')?.innerText === "61"`)
	// The list polls apart from the counts, so a page loaded while some
	// of the 61 were still backing off can be full too; wait for the one
	// of the 50 oldest (13, 100..148), or the next page starts too late.
	tb.wait("a full page", `[...document.querySelectorAll('tr[data-state="failed"]')].length === 50 && [...document.querySelectorAll('tr[data-state="failed"]')].at(-1).dataset.group === "public.t:148"`)
	tb.dismiss()
	tb.view("console-sink")
	tb.do("next page", chromedp.Click(chromedp.CSS(".pager button:last-child")))
	tb.wait("the second page", `document.querySelectorAll('tr[data-state="failed"]').length === 11 && document.querySelector(".pager").innerText.includes("Page 2")`)
	tb.do("previous page", chromedp.Click(chromedp.CSS(".pager button:first-child")))
	tb.wait("the first page again", `document.querySelectorAll('tr[data-state="failed"]').length === 50 && document.querySelector('tr[data-group="public.t:13"]')`)
	tb.do("open the message", chromedp.Click(chromedp.CSS(`tr[data-group="public.t:13"] td a`)))
	tb.wait("the last error", `document.querySelector('[data-field="last_error"]')?.innerText.includes("HTTP 500")`)
	if p := tb.text(".payload"); !strings.Contains(p, `"broken"`) || !strings.Contains(p, "\n  ") {
		t.Errorf("payload not shown pretty-printed: %q", p)
	}
	// Times are local, with UTC on hover.
	if utc := tb.eval(`[...document.querySelectorAll("time")].map(e => e.title).join(",")`); !strings.Contains(utc, " UTC") {
		t.Errorf("times without their UTC value on hover: %q", utc)
	}
	tb.shot("console-message")

	// Redeliver it once the endpoint works again, then all the others.
	failing.Store(false)
	tb.do("redeliver", chromedp.Click(chromedp.CSS("#redeliver")))
	tb.wait("the message delivered", `document.querySelector('[data-field="state"]')?.innerText === "delivered"`)
	if n := len(b.recv.acked()); n != 3 {
		t.Errorf("receiver got %d messages, want 3", n)
	}
	tb.goTo("#/sinks/s/messages?state=failed")
	tb.wait("60 failed", `document.querySelector('.counts [data-count="failed"]')?.innerText === "60"`)
	tb.do("redeliver all failed", chromedp.Click(chromedp.CSS(".toolbar > button")))
	tb.wait("the redeliveries", `[...document.querySelectorAll(".toast")].some(t => t.innerText.includes("60 messages will be delivered again"))`)
	tb.wait("no failed messages", `document.querySelector('.counts [data-count="failed"]')?.innerText === "0"`)
	b.recv.waitCount(t, 63, 20*time.Second)

	// A failed action shows the API's message.
	tb.goTo("#/sinks/s/replays")
	tb.do("open the replay form", chromedp.WaitVisible(chromedp.CSS(`input[name=from]`)))
	tb.eval(`document.querySelector("input[name=from]").value = "2030-01-02T00:00:00"`)
	tb.eval(`document.querySelector("input[name=to]").value = "2030-01-01T00:00:00"`)
	tb.do("replay a backwards window", chromedp.Click(chromedp.CSS(`form[aria-label="Replay a time window"] button[type=submit]`)))
	tb.wait("the replay error", `document.querySelector('.toast.t-error')?.innerText.includes("must be after")`)
	tb.shot("console-replays")
	tb.dismiss()

	// Cancel a backfill: the test holds a lock on the table, so the
	// backfill cannot read it and stays running until it is cancelled.
	lock, err := b.db.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(context.Background(), `LOCK TABLE t IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	tb.goTo("#/sinks/s/backfills")
	tb.do("start a backfill", chromedp.WaitVisible(chromedp.CSS(`form[aria-label="Start a backfill"]`)),
		chromedp.Click(chromedp.CSS(`form[aria-label="Start a backfill"] button[type=submit]`)))
	tb.do("cancel it", chromedp.WaitVisible(chromedp.CSS(`tr[data-state="running"] button[data-key^="cancel:"]`)),
		chromedp.Click(chromedp.CSS(`tr[data-state="running"] button[data-key^="cancel:"]`)))
	tb.wait("the backfill cancelled", `document.querySelector('tr[data-backfill][data-state="cancelled"]') && !document.querySelector('tr[data-state="running"]')`)
	if err := lock.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}

	// Backfill every table, and watch it reach done.
	tb.do("start a backfill", chromedp.WaitVisible(chromedp.CSS(`form[aria-label="Start a backfill"]`)),
		chromedp.Click(chromedp.CSS(`form[aria-label="Start a backfill"] button[type=submit]`)))
	tb.wait("the backfill done", `document.querySelector('tr[data-backfill][data-state="done"] [role=progressbar]')?.getAttribute("aria-valuenow") === "100"`)
	tb.dismiss()
	tb.shot("console-backfills")
	if got := tb.text(`tr[data-state="done"] [role=progressbar]`); got != "done · 63 rows" {
		t.Errorf("progress bar of the finished backfill: %q", got)
	}
	b.recv.waitCount(t, 63+63, 20*time.Second)

	// Pause and resume.
	tb.do("pause", chromedp.Click(chromedp.CSS(".sink-head button")))
	tb.wait("the sink paused", `document.querySelector(".sink-head .badge")?.innerText === "paused" && document.querySelector(".sink-head button").innerText === "Resume"`)
	if s := decodeAs[apiSink](t, e.must(t, 200, "GET", "/api/sinks/s", nil)); s.Status != "paused" {
		t.Errorf("after Pause the sink is %q", s.Status)
	}
	tb.do("resume", chromedp.Click(chromedp.CSS(".sink-head button")))
	tb.wait("the sink active", `document.querySelector(".sink-head .badge")?.innerText === "active"`)

	// Settings and endpoints: secrets stay masked.
	tb.goTo("#/sinks/s/settings")
	tb.wait("the settings", `document.querySelector('dl.settings dt')`)
	tb.shot("console-settings")
	tb.goTo("#/config")
	tb.wait("the endpoint", `document.querySelector('tr[data-endpoint="recv"] .masked')`)
	tb.shot("console-config")
	for _, page := range []string{"#/config", "#/sinks/s/settings"} {
		tb.goTo(page)
		tb.wait("page "+page, `document.querySelector('tr[data-endpoint="recv"], dl.settings dt')`)
		text := tb.eval(`document.body.innerText`)
		for _, s := range leakable {
			if strings.Contains(text, s) {
				t.Errorf("%s shows secret %q", page, s)
			}
		}
	}

	// The overview again, with the chart filled, in both colour schemes.
	tb.goTo("#/")
	tb.wait("the chart", `document.querySelectorAll('svg.spark polyline').length === 2 && (document.querySelector('tr[data-sink="s"] [data-count="delivered"]')?.innerText ?? "0") !== "0"`)
	tb.dismiss()
	tb.shot("console-overview")
	// Counts grew from 1 to 126 delivered; nothing in the row moved.
	if now := tb.eval(sinkRowLayout); now != layout {
		t.Errorf("the sink row's layout changed with its counts: %s, then %s", layout, now)
	}
	if _, err := chromedp.Call(tb.ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}}}); err != nil {
		t.Fatal(err)
	}
	tb.shot("console-overview-dark")
	if _, err := chromedp.Call(tb.ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{}); err != nil {
		t.Fatal(err)
	}

	// Phone width: nothing wider than the screen but scrollable tables.
	tb.do("phone width", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	tb.wait("the overview at phone width", `document.querySelector('tr[data-sink="s"]') && document.documentElement.scrollWidth <= window.innerWidth`)
	tb.shot("console-overview-phone")
	tb.goTo("#/sinks/s/messages/1")
	tb.wait("a message at phone width", `document.querySelector('[data-field="state"]') && document.documentElement.scrollWidth <= window.innerWidth`)
	tb.shot("console-message-phone")
	tb.do("laptop width", chromedp.EmulateViewport(1280, 900))

	// The dev sign-in link works once, and leaves no code in the address.
	code, err := e.svc.Logins.Issue(apiToken)
	if err != nil {
		t.Fatal(err)
	}
	link := console.LoginURL(base, code)
	dev := newTab(t, browser)
	dev.do("open the sign-in link", chromedp.Navigate(link))
	dev.wait("the overview from the link", `document.querySelector('tr[data-sink="s"]')`)
	if href := dev.eval(`location.href`); strings.Contains(href, code) {
		t.Errorf("the sign-in code stayed in the address: %s", href)
	}
	dev.do("sign out", chromedp.Click(chromedp.CSS("#signout")))
	dev.wait("the sign-in form", `document.querySelector("#token") && sessionStorage.length === 0`)
	again := newTab(t, browser)
	again.do("open the used link", chromedp.Navigate(link))
	again.wait("the used link refused", `document.querySelector("#signin-error")?.innerText.includes("used already")`)

	// A sink that does not exist: the API's answer is shown, and goes
	// with the page.
	tb.goTo("#/sinks/nope")
	tb.wait("the not-found message", `!document.querySelector('#banner').hidden && document.querySelector('#banner').innerText.includes("nope")`)
	tb.goTo("#/")
	tb.wait("the overview without the message", `document.querySelector('#banner').hidden && document.querySelector('tr[data-sink="s"]')`)

	// The API goes away: the page says so.
	proxy.CloseClientConnections()
	proxy.Close()
	tb.wait("the unreachable banner", `!document.querySelector('#banner').hidden && document.querySelector('#banner').innerText.includes("Cannot reach")`)
	tb.shot("console-unreachable")
}

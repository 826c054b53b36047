package docs

import (
	"embed"
	"io/fs"
	"net/http"
)

// dist holds swagger-ui-dist's files, fetched from npm at build time (pinned and
// sha256-checked by fetch_swagger_ui.sh, which `make gateway` runs) and never committed:
// only dist/README.md is in git. Nothing is loaded from a CDN at run time.
//
//go:embed index.html dist
var assets embed.FS

// uiFiles are the swagger-ui-dist files the page needs.
var uiFiles = []string{"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "favicon-32x32.png", "favicon-16x16.png"}

// HaveUI says whether the Swagger UI files were built into this binary.
func HaveUI() bool {
	_, err := fs.Stat(assets, "dist/swagger-ui-bundle.js")
	return err == nil
}

// Page serves GET /docs.
func Page(w http.ResponseWriter, r *http.Request) {
	if !HaveUI() {
		http.Error(w, "this gateway binary was built without the Swagger UI files: build it with `make gateway` (it fetches swagger-ui-dist); /openapi.json works", http.StatusNotImplemented)
		return
	}
	page, _ := assets.ReadFile("index.html")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(page)
}

// Assets serves GET /docs/{file} from the embedded swagger-ui-dist files.
func Assets() http.Handler {
	sub, _ := fs.Sub(assets, "dist")
	files := http.FileServerFS(sub)
	allowed := map[string]bool{}
	for _, f := range uiFiles {
		allowed[f] = true
	}
	return http.StripPrefix("/docs/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !allowed[r.URL.Path] {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Cache-Control", "public, max-age=86400")
		files.ServeHTTP(w, r)
	}))
}

// OpenAPI serves GET /openapi.json (built once at start).
func OpenAPI(doc []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(doc)
	}
}

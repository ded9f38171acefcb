import { defineConfig } from "vite";
import preact from "@preact/preset-vite";

// Built into the Python package: the gateway serves it at /ui without Node or a CDN.
// Fixed names without content hashes keep the committed build diff small and the
// staleness check (tests/unit/test_webui_build.py) a plain byte comparison.
export default defineConfig({
  plugins: [preact()],
  base: "/ui/",
  build: {
    outDir: process.env.QSERVER_WEBUI_OUT ?? "../services/gateway/webui",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    rollupOptions: {
      output: {
        entryFileNames: "assets/app.js",
        chunkFileNames: "assets/[name].js",
        assetFileNames: "assets/[name][extname]",
      },
    },
  },
});

// What the page's modules expect of a browser, for the Node runner: IndexedDB (the chunk cache,
// error feedback, the wallet) from `fake-indexeddb` (in memory, per process). fetch, WebCrypto
// (Ed25519), performance and TextEncoder are Node's own.
import 'fake-indexeddb/auto';

// Bundled by tests/browser_support.py with esbuild: the official JS SDK for chat.html.
import { Client } from "@langchain/langgraph-sdk";
window.LangGraphClient = Client;

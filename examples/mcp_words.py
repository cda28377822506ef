"""A small MCP server over stdio (the `mcp` package), used by examples/specs/tools.yaml.

moa spec validate examples/specs/tools.yaml --check-tools
moa run "Reverse 'stressed' and count the words of 'a b c'" -s examples/specs/tools.yaml
"""

from mcp.server.fastmcp import FastMCP

server = FastMCP("words")


@server.tool()
def reverse(text: str) -> str:
    """Reverse a text."""
    return text[::-1]


@server.tool()
def count(text: str) -> int:
    """Count the words of a text."""
    return len(text.split())


if __name__ == "__main__":
    server.run()  # stdio
